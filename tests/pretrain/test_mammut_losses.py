"""Focal contrastive, InfoNCE and caption losses; the distributed (gathered) path on 2 gloo processes."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from pretrain.models.losses import (
    CaptionCrossEntropyLoss,
    FocalContrastiveLoss,
    InfoNCELoss,
    contrastive_logits,
    sigmoid_focal_loss,
)
from toolkit.registry import MODELS


def _embeddings(batch: int = 6, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1)
    txt = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1)
    return img, txt


def _reference_focal(logits: torch.Tensor, targets: torch.Tensor, alpha, gamma) -> torch.Tensor:
    """float64 focal loss via BCE-with-logits and an explicit sigmoid (a different code path)."""
    logits, targets = logits.double(), targets.double()
    prob = torch.sigmoid(logits)
    p_t = torch.where(targets > 0, prob, 1 - prob)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction='none')
    weight = 1.0 if alpha is None else torch.where(targets > 0, alpha, 1 - alpha)
    return weight * (1 - p_t) ** gamma * ce


def test_losses_build_from_registry():
    assert isinstance(MODELS.build(dict(type='FocalContrastiveLoss', gamma=1.0)), FocalContrastiveLoss)
    assert isinstance(MODELS.build(dict(type='InfoNCELoss')), InfoNCELoss)
    assert isinstance(MODELS.build(dict(type='CaptionCrossEntropyLoss')), CaptionCrossEntropyLoss)


def test_focal_symmetric_under_swap():
    img, txt = _embeddings()
    loss_fn = FocalContrastiveLoss(alpha=0.3, gamma=2.0)
    a = loss_fn(img, txt, 10.0, -2.0)
    b = loss_fn(txt, img, 10.0, -2.0)
    torch.testing.assert_close(a, b)
    logits = torch.randn(5, 5)
    labels = torch.arange(5)
    torch.testing.assert_close(
        loss_fn.loss_from_logits(logits, labels), loss_fn.loss_from_logits(logits.t(), labels)
    )


@pytest.mark.parametrize('alpha', [None, 0.25])
def test_focal_extreme_logits_match_float64(alpha):
    logits = torch.tensor([[1e4, -1e4, 3.0, -2.5], [-1e4, 1e4, 0.0, 40.0], [-40.0, 7.0, 1e4, -1e4]])
    targets = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0], [1, 0, 0, 0]])
    logits.requires_grad_(True)
    ours = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=2.0)
    ref = _reference_focal(logits.detach(), targets, alpha, 2.0)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    assert ours[1, 0] == 0 and ours[0, 0] == 0  # easy examples vanish
    assert float(ours[2, 3].detach()) == 0.0 and float(ours[2, 2].detach()) > 1e3  # hard negative at +1e4
    ours.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_under_bf16_autocast_is_finite_float32():
    img, txt = _embeddings(batch=8)
    loss_fn = FocalContrastiveLoss(gamma=2.0)
    img_bf16, txt_bf16 = img.bfloat16().requires_grad_(), txt.bfloat16().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = loss_fn(img_bf16, txt_bf16, torch.tensor(100.0), torch.tensor(-10.0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    expected = loss_fn(img_bf16.detach().float(), txt_bf16.detach().float(), 100.0, -10.0)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(img_bf16.grad.float()).all()


def test_focal_gamma0_no_alpha_is_sigmoid_bce():
    img, txt = _embeddings()
    scale, bias = 7.0, -3.0
    loss = FocalContrastiveLoss(alpha=None, gamma=0.0)(img, txt, scale, bias)
    logits = scale * img @ txt.t() + bias
    eye = torch.eye(6)
    bce_i2t = F.binary_cross_entropy_with_logits(logits, eye, reduction='sum') / 6
    bce_t2i = F.binary_cross_entropy_with_logits(logits.t(), eye, reduction='sum') / 6
    torch.testing.assert_close(loss, 0.5 * (bce_i2t + bce_t2i))


def test_focal_loss_weight_and_gamma_down_weights_easy():
    img, txt = _embeddings()
    plain = FocalContrastiveLoss(gamma=0.0)(img, txt, 10.0, -5.0)
    focal = FocalContrastiveLoss(gamma=2.0)(img, txt, 10.0, -5.0)
    assert focal < plain
    torch.testing.assert_close(
        FocalContrastiveLoss(gamma=2.0, loss_weight=3.0)(img, txt, 10.0, -5.0), 3 * focal
    )


def test_infonce_hand_computation():
    img, txt = _embeddings(batch=3, dim=4)
    scale = 5.0
    sim = [[scale * float(img[i] @ txt[j]) for j in range(3)] for i in range(3)]
    i2t = -sum(sim[i][i] - math.log(sum(math.exp(s) for s in sim[i])) for i in range(3)) / 3
    t2i = -sum(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(3))) for j in range(3)) / 3
    loss = InfoNCELoss(loss_weight=2.0)(img, txt, torch.tensor(scale), torch.tensor(-10.0))
    assert math.isclose(float(loss), 2.0 * 0.5 * (i2t + t2i), rel_tol=1e-5)


def test_caption_ce_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7, requires_grad=True)
    targets = torch.tensor([[1, 2, -100, -100], [3, 4, 5, -100]])
    loss_fn = CaptionCrossEntropyLoss()
    loss = loss_fn(logits, targets)
    manual = torch.stack(
        [-logits[b, t].log_softmax(-1)[targets[b, t]] for b, t in [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]]
    )
    torch.testing.assert_close(loss, manual.mean())
    changed = logits.detach().clone()
    changed[0, 3] += 100.0
    torch.testing.assert_close(loss_fn(changed, targets), loss.detach())
    smooth = CaptionCrossEntropyLoss(label_smoothing=0.1, ignore_index=0, loss_weight=0.5)
    expected = 0.5 * F.cross_entropy(
        logits.reshape(-1, 7), targets.clamp(min=0).reshape(-1), ignore_index=0, label_smoothing=0.1
    )
    torch.testing.assert_close(smooth(logits, targets.clamp(min=0)), expected)
    empty = loss_fn(logits, torch.full((2, 4), -100))
    assert float(empty.detach()) == 0.0
    empty.backward()
    assert logits.grad is not None


# ----------------------------------------------------------------------------- distributed path
def _worker(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    try:
        img, txt = _embeddings(batch=8, seed=3)
        local_img = img[rank * 4 : (rank + 1) * 4].clone().requires_grad_(True)
        local_txt = txt[rank * 4 : (rank + 1) * 4].clone().requires_grad_(True)
        results = {}
        for name, loss_fn in (('focal', FocalContrastiveLoss(alpha=0.4)), ('infonce', InfoNCELoss())):
            local_img.grad = local_txt.grad = None
            _, _, labels = contrastive_logits(local_img, local_txt, 1.0)
            loss = loss_fn(local_img, local_txt, 12.0, -4.0)
            loss.backward()
            results[name] = (
                float(loss.detach()),
                local_img.grad.tolist(),
                local_txt.grad.tolist(),
                labels.tolist(),
            )
        queue.put((rank, results))
        dist.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()
    queue.close()
    queue.join_thread()  # the results are sent
    # Skip the interpreter's shutdown: gloo's threads can abort it ("terminate called without an active
    # exception", exit code -6) after all the work is done (seen in a full test run on a loaded machine).
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_distributed_gather_matches_single_process():
    ctx = mp.get_context('spawn')  # fork after OpenMP/gloo initialisation can deadlock
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, queue), daemon=True) for rank in range(2)]
    for proc in procs:
        proc.start()
    try:
        results = dict(queue.get(timeout=120) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=120)  # a loaded machine can take long to tear gloo down
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0, 0], 'a worker failed or did not exit in time'
    img, txt = _embeddings(batch=8, seed=3)
    for name, loss_fn in (('focal', FocalContrastiveLoss(alpha=0.4)), ('infonce', InfoNCELoss())):
        img_full, txt_full = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        full = loss_fn(img_full, txt_full, 12.0, -4.0)
        full.backward()
        # mean of the per-rank losses is the full-batch loss
        assert math.isclose(
            0.5 * (results[0][name][0] + results[1][name][0]), float(full.detach()), rel_tol=1e-5
        )
        assert results[1][name][3] == [4, 5, 6, 7]  # offset positives on rank 1
        for rank in range(2):
            rows = slice(rank * 4, (rank + 1) * 4)
            # gradients flow through the gather: each rank gets d(sum of all rank losses)/d(its rows)
            torch.testing.assert_close(
                torch.tensor(results[rank][name][1]), 2 * img_full.grad[rows], atol=1e-5, rtol=1e-4
            )
            torch.testing.assert_close(
                torch.tensor(results[rank][name][2]), 2 * txt_full.grad[rows], atol=1e-5, rtol=1e-4
            )


def test_hard_negative_texts_add_image_to_text_columns():
    img, txt = _embeddings(batch=3, dim=4)
    _, neg = _embeddings(batch=3, dim=4, seed=1)
    scale = 5.0
    logits_i2t, logits_t2i, labels = contrastive_logits(img, txt, scale, -1.0, neg_txt_emb=neg)
    assert logits_i2t.shape == (3, 6) and logits_t2i.shape == (3, 3)
    torch.testing.assert_close(logits_i2t[:, 3:], scale * img @ neg.t() - 1.0)
    assert labels.tolist() == [0, 1, 2]
    # InfoNCE: the negatives join each image's softmax.
    sim = scale * img @ torch.cat([txt, neg]).t()
    i2t = F.cross_entropy(sim, labels)
    t2i = F.cross_entropy(scale * txt @ img.t(), labels)
    loss = InfoNCELoss()(img, txt, torch.tensor(scale), neg_txt_emb=neg)
    torch.testing.assert_close(loss, 0.5 * (i2t + t2i))
    # Focal: a negative that matches its image closely costs more than a far one.
    near = FocalContrastiveLoss(gamma=1.0)(img, txt, scale, -1.0, neg_txt_emb=img)
    far = FocalContrastiveLoss(gamma=1.0)(img, txt, scale, -1.0, neg_txt_emb=-img)
    plain = FocalContrastiveLoss(gamma=1.0)(img, txt, scale, -1.0)
    assert near > far > plain
