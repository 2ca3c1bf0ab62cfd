"""Numerics of the pretraining losses: float64 references at extreme logits (+-1e4) and under bf16 autocast,
and degenerate captions (empty, only special tokens, duplicates) through the four pretraining models.

The references are written independently of the code under test: ``log sigmoid`` and ``log softmax`` are
spelled out from ``max`` / ``log1p`` / ``exp`` in float64 (no ``F.logsigmoid``, ``F.log_softmax`` or
``F.cross_entropy``), and the sigmoid-focal reference is itself checked against 50-digit mpmath.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mpmath
import pytest
import torch
from mmengine.config import Config
from mmengine.structures import BaseDataElement
from torch import Tensor

from pretrain.models.albef_losses import DistilledContrastiveLoss
from pretrain.models.beit3 import MDMLoss
from pretrain.models.fiber_losses import ITMLoss, MLMLoss, sample_hard_negatives
from pretrain.models.losses import CaptionCrossEntropyLoss, FocalContrastiveLoss, InfoNCELoss
from toolkit.registry import MODELS

REPO = Path(__file__).resolve().parents[2]
EXTREME = 1e4


# ----------------------------------------------------------------------------------------------------------
# float64 references
# ----------------------------------------------------------------------------------------------------------


def _softplus(x: Tensor) -> Tensor:
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))."""
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


def _log_softmax(x: Tensor) -> Tensor:
    """Row-wise log softmax by max subtraction; -inf entries stay -inf (rows need one finite entry)."""
    top = x.max(dim=1, keepdim=True).values
    return x - top - torch.log(torch.exp(x - top).sum(dim=1, keepdim=True))


def focal_reference(logits: Tensor, targets: Tensor, alpha: float | None, gamma: float) -> Tensor:
    """Element-wise ``-alpha_t (1 - p_t)^gamma log p_t`` with ``p_t = sigmoid(+-x)``, in float64."""
    z = (2 * targets - 1) * logits
    log_pt, log_one_minus_pt = -_softplus(-z), -_softplus(z)
    loss = -log_pt * torch.exp(gamma * log_one_minus_pt)
    if alpha is not None:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def focal_contrastive_reference(
    img: Tensor, txt: Tensor, scale: Tensor, bias: Tensor, alpha: float | None, gamma: float
) -> Tensor:
    """RO-ViT's focal contrastive loss: focal terms over all B x B pairs, positives on the diagonal, sum / B,
    averaged over the image-to-text and text-to-image directions."""
    targets = torch.eye(len(img), dtype=torch.float64)
    i2t = scale * img @ txt.t() + bias
    t2i = scale * txt @ img.t() + bias
    per_dir = [focal_reference(x, targets, alpha, gamma).sum() / len(img) for x in (i2t, t2i)]
    return (per_dir[0] + per_dir[1]) / 2


def info_nce_reference(img: Tensor, txt: Tensor, scale: Tensor) -> Tensor:
    diag = torch.arange(len(img))
    i2t, t2i = _log_softmax(scale * img @ txt.t()), _log_softmax(scale * txt @ img.t())
    return -(i2t[diag, diag].mean() + t2i[diag, diag].mean()) / 2


def cross_entropy_reference(logits: Tensor, labels: Tensor) -> Tensor:
    return -_log_softmax(logits)[torch.arange(len(labels)), labels].mean()


def test_focal_reference_matches_mpmath() -> None:
    """The reference itself, against 50-digit arithmetic, where float64's naive formula breaks down."""
    mpmath.mp.dps = 50
    for x in (-EXTREME, -700.0, -30.0, -1.0, 0.0, 2.5, 40.0, 800.0, EXTREME):
        for target in (0.0, 1.0):
            z = mpmath.mpf(x) if target else -mpmath.mpf(x)  # p_t = sigmoid(z), 1 - p_t = sigmoid(-z)
            exact = -((1 / (1 + mpmath.exp(z))) ** 2) * mpmath.log(1 / (1 + mpmath.exp(-z)))
            got = focal_reference(torch.tensor([x], dtype=torch.float64), torch.tensor([target]), None, 2.0)
            assert float(got) == pytest.approx(float(exact), rel=1e-12, abs=1e-300), (x, target)


# ----------------------------------------------------------------------------------------------------------
# Contrastive losses at extreme logits
# ----------------------------------------------------------------------------------------------------------


def _embeddings(size: int = 6, dim: int = 8) -> tuple[Tensor, Tensor]:
    """Unit embeddings whose positives point both ways: pairs 0-2 aligned (logit +scale, an easy positive),
    pairs 3-5 opposed (logit -scale, a positive at the far wrong end); negatives anywhere in between."""
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(size, dim, generator=gen, dtype=torch.float64), dim=1)
    noise = torch.randn(size, dim, generator=gen, dtype=torch.float64) * 1e-3
    sign = torch.tensor([1.0] * (size // 2) + [-1.0] * (size - size // 2), dtype=torch.float64)[:, None]
    txt = torch.nn.functional.normalize(sign * img + noise, dim=1)
    return img, txt


def _leaves(*tensors: Tensor, dtype: torch.dtype = torch.float64) -> list[Tensor]:
    return [t.detach().to(dtype).requires_grad_(True) for t in tensors]


def _value_and_grads(fn: Any, *inputs: Tensor) -> tuple[Tensor, list[Tensor]]:
    value = fn(*inputs)
    grads = torch.autograd.grad(value, inputs)
    return value.detach(), [g.detach() for g in grads]


def _assert_close(got: Tensor, ref: Tensor, rtol: float, what: str) -> None:
    """Relative to the largest magnitude of the reference: gradients mix entries near 0 and near 1e4."""
    got, ref = got.double(), ref.double()
    assert torch.isfinite(got).all(), f'{what}: not finite'
    scale = ref.abs().max().clamp(min=1e-12)
    err = ((got - ref).abs().max() / scale).item()
    assert err <= rtol, f'{what}: relative error {err:.2e} > {rtol:.0e}'


@pytest.mark.parametrize('alpha, gamma', [(None, 2.0), (0.25, 2.0), (None, 0.0)])
@pytest.mark.parametrize('bias', [0.0, -10.0])
def test_focal_contrastive_matches_float64_at_extreme_logits(
    alpha: float | None, gamma: float, bias: float
) -> None:
    img, txt = _embeddings()
    loss = FocalContrastiveLoss(alpha=alpha, gamma=gamma)
    scale, shift = torch.tensor(EXTREME, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64)
    inputs = _leaves(img, txt, scale, shift)
    got, got_grads = _value_and_grads(loss, *inputs)
    ref, ref_grads = _value_and_grads(
        lambda *x: focal_contrastive_reference(*x, alpha=alpha, gamma=gamma), *_leaves(img, txt, scale, shift)
    )
    # The hard positives alone cost ~1e4 each: the loss is large, finite and exactly what float64 says.
    assert ref > 1e3
    _assert_close(got, ref, 1e-5, 'loss')
    for name, g, r in zip(
        ('img_emb', 'txt_emb', 'logit_scale', 'logit_bias'), got_grads, ref_grads, strict=True
    ):
        _assert_close(g, r, 1e-4, f'd loss / d {name}')


@pytest.mark.parametrize('scale', [10.0, 100.0, EXTREME])
def test_focal_contrastive_under_bf16_autocast(scale: float) -> None:
    img, txt = _embeddings()
    loss = FocalContrastiveLoss()
    img_bf16, txt_bf16 = _leaves(img, txt, dtype=torch.bfloat16)
    logit_scale, bias = torch.tensor(scale, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = loss(img_bf16, txt_bf16, logit_scale, bias)
    got.backward()
    got = got.detach()
    assert got.dtype == torch.float32 and torch.isfinite(got)
    for leaf in (img_bf16, txt_bf16, logit_scale, bias):
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    s, b = torch.tensor(scale, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    # No error beyond rounding the inputs to bf16: float64 on the same bf16 values agrees to float32 level.
    rounded = focal_contrastive_reference(
        img_bf16.detach().double(), txt_bf16.detach().double(), s, b, None, 2.0
    )
    assert float(got) == pytest.approx(float(rounded), rel=1e-5)
    # Against the unrounded embeddings: bf16 keeps 8 bits, so a logit moves by up to ~scale * 2^-8.
    exact = focal_contrastive_reference(img, txt, s, b, None, 2.0)
    assert float(got) == pytest.approx(float(exact), rel=2e-2, abs=scale * 2**-8)


@pytest.mark.parametrize('dtype', [torch.float64, torch.bfloat16])
def test_info_nce_at_extreme_logits(dtype: torch.dtype) -> None:
    img, txt = (x.to(dtype) for x in _embeddings())
    scale = torch.tensor(EXTREME, dtype=torch.float64)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        got, got_grads = _value_and_grads(InfoNCELoss(), *_leaves(img, txt, dtype=dtype), *_leaves(scale))
    ref, ref_grads = _value_and_grads(info_nce_reference, *_leaves(img, txt, scale))
    assert ref > 1e3
    _assert_close(got, ref, 1e-5, 'loss')
    for g, r in zip(got_grads, ref_grads, strict=True):
        # The loss runs in float32: at |logit| ~ 1e4 a logit is off by ~1e-3 (2^-24 x 1e4 x a few), which
        # moves the softmax of near-tied entries by ~1e-3 relative. A bf16 leaf also receives its gradient
        # rounded to bf16 (8 significant bits: 2^-8 = 3.9e-3 relative).
        _assert_close(g, r, 5e-3 if g.dtype != torch.bfloat16 else 2**-7, 'grad')


def test_albef_distilled_contrastive_at_extreme_logits() -> None:
    """Soft targets (momentum distillation) and -inf (unwritten queue slots) next to +-1e4 logits."""
    gen = torch.Generator().manual_seed(0)
    size, keys = 4, 7
    logits = (torch.rand(size, keys, generator=gen, dtype=torch.float64) * 2 - 1) * EXTREME
    logits_m = (torch.rand(size, keys, generator=gen, dtype=torch.float64) * 2 - 1) * EXTREME
    for grid in (logits, logits_m):
        grid[:, -1] = float('-inf')  # an unwritten queue slot
    positives = torch.zeros(size, keys, dtype=torch.bool)
    positives[torch.arange(size), torch.arange(size)] = True
    positives[0, 5] = True  # another caption of image 0 in the queue
    logits[1, 1] = -EXTREME  # a positive at the far wrong end
    alpha = 0.4

    def reference(i2t: Tensor, t2i: Tensor) -> Tensor:
        hard = positives.double() / positives.double().sum(1, keepdim=True)
        target = (1 - alpha) * hard + alpha * torch.exp(_log_softmax(logits_m))
        per_dir = [
            -(torch.where(target > 0, target * _log_softmax(x), torch.zeros_like(x))).sum(1).mean()
            for x in (i2t, t2i)
        ]
        return (per_dir[0] + per_dir[1]) / 2

    loss = DistilledContrastiveLoss()
    got, got_grads = _value_and_grads(
        lambda i2t, t2i: loss(i2t, t2i, positives, positives, logits_m, logits_m, alpha=alpha),
        *_leaves(logits, logits.flip(0)),
    )
    ref, ref_grads = _value_and_grads(reference, *_leaves(logits, logits.flip(0)))
    assert ref > 1e3
    _assert_close(got, ref, 1e-6, 'loss')
    for g, r in zip(got_grads, ref_grads, strict=True):
        assert torch.isfinite(g).all() and g[:, -1].abs().max() == 0
        _assert_close(g, r, 1e-6, 'grad')


def test_token_losses_at_extreme_logits() -> None:
    """The cross-entropies of FIBER's ITM and MLM, MaMMUT's captioning and BEiT-3's MDM."""
    gen = torch.Generator().manual_seed(0)
    logits = (torch.rand(6, 11, generator=gen, dtype=torch.float64) * 2 - 1) * EXTREME
    labels = torch.tensor([0, 3, 5, 10, 2, 7])
    logits[1, 3] = -EXTREME  # the right class at the far wrong end
    ref = cross_entropy_reference(logits, labels)
    for name, fn in {
        'MLMLoss': lambda x: MLMLoss()(x, labels),
        'CaptionCrossEntropyLoss': lambda x: CaptionCrossEntropyLoss()(x[None], labels[None]),
        'MDMLoss': lambda x: MDMLoss()(x, labels, x.new_zeros(0, 11), labels.new_zeros(0)),
    }.items():
        (leaf,) = _leaves(logits)
        got = fn(leaf)
        got.backward()
        _assert_close(got.detach(), ref, 1e-6, name)
        assert torch.isfinite(leaf.grad).all(), name
    itm = torch.stack([logits[:, 0], logits[:, 1]], dim=1)
    got = ITMLoss()(itm, labels % 2)
    _assert_close(got, cross_entropy_reference(itm, labels % 2), 1e-6, 'ITMLoss')


def test_hard_negatives_at_extreme_logits() -> None:
    """softmax over +-1e4 logits picks the hardest allowed candidate; never one of the same image."""
    logits = torch.tensor(
        [[EXTREME, -EXTREME, EXTREME / 2], [EXTREME, EXTREME, -EXTREME], [0.0, -EXTREME, EXTREME]]
    )
    img_ids = torch.tensor([7, 7, 9])  # samples 0 and 1 show the same image
    neg = sample_hard_negatives(logits, img_ids, generator=torch.Generator().manual_seed(0))
    assert neg.txt_for_img.tolist() == [2, 2, 0] and neg.img_valid.all()
    assert neg.img_for_txt.tolist() == [2, 2, 0]
    alone = sample_hard_negatives(logits[:2, :2], img_ids[:2])  # every candidate shows the same image
    assert not alone.img_valid.any() and not alone.txt_valid.any()


# ----------------------------------------------------------------------------------------------------------
# Degenerate captions through the four pretraining models
# ----------------------------------------------------------------------------------------------------------

CONFIGS = {
    'MaMMUT': 'configs/mammut/mammut_vit-tiny-dec4_1xb32-30e_shapes-cap.py',
    'FIBER': 'configs/fiber/fiber_swin-tiny-roberta-tiny_1xb32-30e_shapes-pretrain.py',
    'ALBEF': 'configs/albef/albef_vit-tiny-bert-tiny_1xb32-20e_shapes.py',
    'BEiT3': 'configs/beit3/beit3_tiny-patch16-128_1xb32-12e_shapes-mdm.py',
    'BEiT3-ret': 'configs/beit3/beit3_tiny-patch16-128_1xb32-10e_shapes-ret.py',  # its contrastive loss
}
# '' and whitespace tokenize to [BOS, EOS] only (no maskable token, nothing to caption but EOS); two images
# share a caption (a contrastive "positive" in two columns).
MIXED = ['', ' \t\n ', 'a red circle above a blue square', 'a red circle above a blue square']
BATCHES = {
    'mixed': MIXED,
    'all-empty': ['', '', ' ', '\t'],
    'all-duplicate': ['two green stars'] * 4,
    'one-image': MIXED,  # and every sample shows the same image: no hard negative exists for ITM
}
SIZE = 32  # 2 x 2 patches of 16 px: the losses do not care, the test runs in seconds


def _model(name: str) -> torch.nn.Module:
    cfg = Config.fromfile(str(REPO / CONFIGS[name])).model.to_dict()
    if name == 'MaMMUT':
        cfg['image_encoder'].update(img_size=SIZE)
    elif name == 'ALBEF':
        cfg['image_encoder'].update(img_size=SIZE)
        cfg.update(queue_size=8, alpha_warmup_iters=0)  # distillation (alpha > 0) from the first step
    elif name.startswith('BEiT3'):
        cfg['backbone'].update(img_size=SIZE)
        cfg.update(min_mask_patches=1)
    model = MODELS.build(cfg)
    model.init_weights()
    return model.train()


@pytest.mark.parametrize('batch', [*BATCHES, 'mixed-bf16'])
@pytest.mark.parametrize('name', list(CONFIGS))
def test_degenerate_captions_give_finite_losses(name: str, batch: str) -> None:
    """Every logged value and every gradient stays finite, twice (ALBEF's queue is filled the second time)."""
    torch.manual_seed(0)
    model = _model(name)
    images = [torch.randint(0, 255, (3, SIZE, SIZE), dtype=torch.uint8) for _ in range(4)]
    texts = BATCHES[batch.removesuffix('-bf16')]
    samples = [
        BaseDataElement(text=text, img_id=0 if batch == 'one-image' else i) for i, text in enumerate(texts)
    ]
    for _ in range(2):
        model.zero_grad()
        data = model.data_preprocessor(dict(inputs=images, data_samples=samples), training=True)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=batch.endswith('bf16')):
            losses = model(**data, mode='loss')
        terms = {k: v for k, v in losses.items() if 'loss' in k}
        assert terms, losses
        for key, value in losses.items():
            assert torch.isfinite(value).all(), f'{name} {batch}: {key} = {value}'
        sum(terms.values()).backward()
        bad = [
            n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        assert not bad, f'{name} {batch}: non-finite gradients in {bad[:5]}'
