"""FIBER coarse-grained pretraining and captioning at tiny size: ITC against a hand computation, fusion off in
ITC, ITM hard negatives never positive, BERT masking rates and the loss on masked positions only, a causal
caption pass, ITM re-ranking in RetrievalMetric, every FIBER config builds, and tools/train.py + tools/test.py
run the Shapes World pretraining config end to end."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.structures import BaseDataElement

from pretrain.evaluation.retrieval import RetrievalMetric, rerank_topk, reranked_retrieval_metrics
from pretrain.models.fiber_losses import MLMLoss, sample_hard_negatives
from pretrain.models.losses import InfoNCELoss
from toolkit.checkpoint import safe_load
from toolkit.registry import MODELS

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = str(REPO / 'configs/_base_/tokenizers/shapes_world.json')
PRETRAIN_CONFIG = 'configs/fiber/fiber_swin-tiny-roberta-tiny_1xb32-30e_shapes-pretrain.py'
FIBER_CONFIGS = sorted((REPO / 'configs/fiber').glob('fiber_*roberta*_*pretrain.py')) + sorted(
    (REPO / 'configs/fiber').glob('fiber_*roberta*_*-cap.py')
)
# Two Swin stages (8 x 8 then 4 x 4 tokens on 32 px), three text layers, the last two of each fused.
TINY_BACKBONE = dict(
    type='FIBERBackbone',
    fusion_layers=2,
    image=dict(
        embed_dims=16,
        depths=(2, 2),
        num_heads=(1, 2),
        strides=(4, 2),
        patch_size=4,
        window_size=2,
        out_indices=(1,),
        drop_path_rate=0.0,
    ),
    text=dict(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    ),
)
PRETRAIN = dict(
    itc_loss=dict(type='InfoNCELoss'), itm_loss=dict(type='ITMLoss'), mlm_loss=dict(type='MLMLoss')
)
CAPTION = dict(caption_loss=dict(type='CaptionCrossEntropyLoss'), generation=dict(method='greedy', max_len=6))
CAPTIONS = [
    'a red circle above a blue square',
    'two green stars',
    'a yellow hexagon to the left of an orange triangle',
    'one shape: a purple circle',
]


def _build(tasks: dict, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    tokenizer = dict(type='HFTokenizer', path=TOKENIZER, context_length=32)
    # Gates open (the backbone starts them at 0), so that fusion shows in every check.
    cfg = dict(type='FIBER', embed_dim=16, backbone=TINY_BACKBONE, tokenizer=tokenizer, fusion_gate_init=0.5)
    model = MODELS.build({**cfg, **tasks, **kwargs})
    gates = [m.alpha.item() for m in [*model.backbone.image_cross_attn, *model.backbone.text_cross_attn]]
    assert gates == [0.5] * 4
    return model.eval()  # deterministic (no dropout); the losses run the same in eval mode


def _batch(img_ids: list[int] | None = None) -> tuple[torch.Tensor, list[BaseDataElement]]:
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    samples = [BaseDataElement(text=text) for text in CAPTIONS]
    for sample, img_id in zip(samples, img_ids or range(4), strict=True):
        sample.set_metainfo(dict(img_id=img_id))
    return images, samples


# ---------------------------------------------------------------------------------------------------- ITC
def test_info_nce_matches_hand_computation() -> None:
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = 2.0
    # logits_i2t = 2 * [[1, 0.6], [0, 0.8]]; logits_t2i = 2 * [[1, 0], [0.6, 0.8]].
    i2t = -(2.0 - math.log(math.exp(2.0) + math.exp(1.2))) - (1.6 - math.log(1.0 + math.exp(1.6)))
    t2i = -(2.0 - math.log(math.exp(2.0) + 1.0)) - (1.6 - math.log(math.exp(1.2) + math.exp(1.6)))
    expected = 0.5 * (i2t / 2 + t2i / 2)
    assert InfoNCELoss()(img, txt, torch.tensor(scale)).item() == pytest.approx(expected, abs=1e-6)


def test_itc_loss_is_the_dual_encoder_reference() -> None:
    model = _build(PRETRAIN)
    images, samples = _batch()
    out = model(images, samples, mode='loss')
    with torch.no_grad():
        feats = model.backbone.encode_image(images).image_feats[-1]  # (B, C, h, w), fusion off
        img_emb = model.img_proj(feats.mean(dim=(2, 3)))
        img_emb = img_emb / img_emb.norm(dim=-1, keepdim=True)
        ids = model.tokenizer(CAPTIONS)
        lengths = model.tokenizer.lengths(ids)
        ids = ids[:, : int(lengths.max())]
        mask = torch.arange(ids.shape[1])[None] < lengths[:, None]
        txt_emb = model.txt_proj(model.backbone.encode_text(ids, mask)[:, 0])
        txt_emb = txt_emb / txt_emb.norm(dim=-1, keepdim=True)
        logits = math.exp(model.logit_scale.item()) * img_emb @ txt_emb.t()
        diag = logits.diagonal()
        loss_i2t = (logits.logsumexp(dim=1) - diag).mean()
        loss_t2i = (logits.logsumexp(dim=0) - diag).mean()
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert out['loss_itc'].item() == pytest.approx(0.5 * (loss_i2t + loss_t2i).item(), abs=1e-5)


def test_itc_runs_without_fusion() -> None:
    """The ITC image features ignore the text; the fused ITM pass on the same images does not."""
    model = _build(PRETRAIN)
    seen: dict[str, list[torch.Tensor]] = {'itc': [], 'itm': []}
    model.img_proj.register_forward_hook(lambda m, args, out: seen['itc'].append(args[0].clone()))
    model.itm_head.image_pool.register_forward_hook(
        lambda m, args, out: seen['itm'].append(args[0][:4].clone())
    )
    images, samples = _batch()
    for texts in (CAPTIONS, CAPTIONS[::-1]):
        for sample, text in zip(samples, texts, strict=True):
            sample.text = text
        torch.manual_seed(0)
        model(images, samples, mode='loss')
    assert torch.equal(seen['itc'][0], seen['itc'][1])
    assert not torch.allclose(seen['itm'][0], seen['itm'][1], atol=1e-4)
    assert torch.equal(seen['itc'][0], model.backbone.encode_image(images).image_feats[-1].mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------------------------- ITM
def test_hard_negatives_never_draw_the_same_image() -> None:
    img_ids = torch.tensor([0, 1, 0, 2, 1, 3])  # two captions each of images 0 and 1
    same = img_ids[:, None] == img_ids[None, :]
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(0)) + 20.0 * same  # positives dominate
    gen = torch.Generator().manual_seed(1)
    counts = torch.zeros(6, 6)
    for _ in range(500):
        neg = sample_hard_negatives(logits, img_ids, generator=gen)
        assert neg.img_valid.all() and neg.txt_valid.all()
        assert not (img_ids[neg.txt_for_img] == img_ids).any()
        assert not (img_ids[neg.img_for_txt] == img_ids).any()
        counts[torch.arange(6), neg.txt_for_img] += 1
    # Row 0 (image 0) draws captions 1, 3, 4, 5 with probability softmax(logits[0]) over them.
    allowed = ~same[0]
    probs = logits[0][allowed].softmax(dim=0)
    assert torch.allclose(counts[0][allowed] / 500, probs, atol=0.07)  # 3 standard deviations
    # All captions of one image: nobody has a candidate.
    lonely = sample_hard_negatives(torch.zeros(3, 3), torch.tensor([7, 7, 7]))
    assert not lonely.img_valid.any() and not lonely.txt_valid.any()


def test_itm_pairs_of_a_batch_with_duplicate_images() -> None:
    model = _build(PRETRAIN)
    images, samples = _batch(img_ids=[5, 5, 9, 9])  # two captions of each of two images
    images = torch.arange(4.0)[:, None, None, None].expand(4, 3, 32, 32).clone()  # image i is filled with i
    ids, mask = model._tokenize(CAPTIONS, images.device)
    img_ids = torch.tensor([5, 5, 9, 9])
    for seed in range(20):
        torch.manual_seed(seed)
        logits = torch.randn(4, 4) * 5
        pair_images, pair_ids, _, labels = model._itm_pairs(images, ids, mask, logits, samples)
        img_index = pair_images[:, 0, 0, 0].long()
        txt_index = torch.stack([torch.nonzero((ids == row).all(dim=1)).flatten()[0] for row in pair_ids])
        assert labels.tolist() == [1] * 4 + [0] * 8
        assert torch.equal(img_index[:4], txt_index[:4])
        assert not (img_ids[img_index[4:]] == img_ids[txt_index[4:]]).any()


def test_pretraining_losses_and_gradients() -> None:
    model = _build(PRETRAIN)
    model.train()
    images, samples = _batch()
    out = model(images, samples, mode='loss')
    losses = {key: value for key, value in out.items() if key.startswith('loss_')}
    assert set(losses) == {'loss_itc', 'loss_itm', 'loss_mlm'}
    assert all(torch.isfinite(value) for value in losses.values())
    assert 0.0 <= out['acc_itm'] <= 1.0 and 'logit_scale' in out
    sum(losses.values()).backward()
    missing = [name for name, param in model.named_parameters() if param.grad is None]
    assert not missing, missing
    for cross_attn in [*model.backbone.image_cross_attn, *model.backbone.text_cross_attn]:
        assert cross_attn.q_proj.weight.grad.abs().sum() > 0  # fusion is trained through ITM and MLM


# ---------------------------------------------------------------------------------------------------- MLM
def test_mlm_masking_rates_and_specials() -> None:
    loss = MLMLoss()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 129, (400, 40), generator=gen)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = maskable[:, -1] = False  # BOS / EOS
    maskable[:200, 30:] = False  # padding
    masked, labels = loss.mask_tokens(ids, maskable, mask_token_id=129, vocab_size=130,
                                      special_ids=(0, 1, 2), generator=gen)  # fmt: skip
    chosen = labels != loss.ignore_index
    assert not (chosen & ~maskable).any()
    assert chosen.sum() / maskable.sum() == pytest.approx(0.15, abs=0.01)
    assert torch.equal(labels[chosen], ids[chosen])
    as_mask = (masked == 129) & chosen
    changed = (masked != ids) & (masked != 129) & chosen
    kept = (masked == ids) & chosen
    assert as_mask.sum() / chosen.sum() == pytest.approx(0.8, abs=0.02)
    assert changed.sum() / chosen.sum() == pytest.approx(0.1, abs=0.02)  # minus 1/126 drawing the same id
    assert kept.sum() / chosen.sum() == pytest.approx(0.1, abs=0.02)
    assert torch.equal(masked[~chosen], ids[~chosen])
    assert not torch.isin(masked[changed], torch.tensor([0, 1, 2, 129])).any()


def test_mlm_loss_covers_masked_positions_only() -> None:
    loss = MLMLoss()
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 4, 7
    value = loss(logits, labels)
    expected = 0.5 * (
        F.cross_entropy(logits[0, 1:2], labels[0, 1:2]) + F.cross_entropy(logits[1, 3:4], labels[1, 3:4])
    )
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)
    value.backward()
    grad_rows = logits.grad.abs().sum(dim=-1) > 0
    assert torch.equal(grad_rows, labels != -100)
    assert loss(logits, torch.full((2, 5), -100)).item() == 0.0


def test_mlm_head_reads_only_the_chosen_positions() -> None:
    model = _build(PRETRAIN)
    head_rows: list[int] = []
    model.lm_head.register_forward_hook(lambda m, args, out: head_rows.append(args[0].shape[0]))
    labels: list[torch.Tensor] = []
    mask_tokens = model._mask
    model._mask = lambda ids, mask: labels.append(mask_tokens(ids, mask)) or labels[-1]
    images, samples = _batch()
    out = model(images, samples, mode='loss')
    chosen = labels[0][1] != -100
    assert head_rows == [int(chosen.sum())] and torch.isfinite(out['loss_mlm'])
    assert not chosen[:, 0].any()  # never BOS


# ------------------------------------------------------------------------------------------------ captions
def test_caption_pass_is_causal_and_reads_the_image() -> None:
    model = _build(CAPTION)
    images, _ = _batch()
    ids, _ = model._tokenize(CAPTIONS, images.device)
    with torch.no_grad():
        logits = model.caption_logits(images, ids)
        changed = ids.clone()
        changed[:, 4] = 50
        later = model.caption_logits(images, changed)
        other_image = model.caption_logits(images.flip(0), ids)
    assert torch.allclose(logits[:, :4], later[:, :4], atol=1e-5)
    assert not torch.allclose(logits[:, 4:], later[:, 4:], atol=1e-4)
    assert not torch.allclose(logits[:, :4], other_image[:, :4], atol=1e-4)


def test_caption_training_and_generation() -> None:
    model = _build(CAPTION)
    model.train()
    images, samples = _batch()
    out = model(images, samples, mode='loss')
    assert set(k for k in out if k.startswith('loss_')) == {'loss_caption'} and torch.isfinite(
        out['loss_caption']
    )
    out['loss_caption'].backward()
    # Unused: the image-side cross-attention (only the text attends to the image), and the last Swin block and
    # output norm, whose output no text layer reads (fused text layer k reads the tokens entering block k).
    stage, block = model.backbone.fused_image_blocks[-1]
    unused = (
        'backbone.image_cross_attn.',
        f'backbone.image.stages.{stage}.blocks.{block}.',
        'backbone.image.norm',
    )
    for name, param in model.named_parameters():
        assert (param.grad is None) == name.startswith(unused), name
    model.eval()
    preds = model(images, [BaseDataElement(gt_captions=['a red circle']) for _ in range(4)], mode='predict')
    assert all(isinstance(p.pred_caption, str) for p in preds)
    assert all(len(p.pred_caption.split()) <= 6 for p in preds)
    beams = model.generate(images, method='beam', beam_size=2, max_len=4)
    assert len(beams) == 4 and all(isinstance(c, str) for c in beams)


# ----------------------------------------------------------------------------------------------- retrieval
def test_rerank_topk_is_a_valid_permutation() -> None:
    sim = torch.randn(5, 9, generator=torch.Generator().manual_seed(0))
    finer = torch.randn(5, 9, generator=torch.Generator().manual_seed(1))
    reranked = rerank_topk(sim, 3, lambda rows, cols: finer[rows, cols])
    for row in range(5):
        order = reranked[row].argsort(descending=True)
        assert sorted(order.tolist()) == list(range(9))
        top = sim[row].topk(3).indices
        assert set(order[:3].tolist()) == set(top.tolist())
        assert order[:3].tolist() == top[finer[row, top].argsort(descending=True)].tolist()
        rest = [c for c in sim[row].argsort(descending=True).tolist() if c not in top.tolist()]
        assert order[3:].tolist() == rest


def test_reranking_with_a_perfect_scorer_fixes_recall_inside_the_top_k() -> None:
    txt_to_img = torch.tensor([0, 0, 1, 1, 2, 2])
    sim = torch.tensor(
        [[0.1, 0.2, 0.9, 0.3, 0.0, 0.0], [0.5, 0.4, 0.3, 0.1, 0.0, 0.0], [0.0, 0.9, 0.0, 0.0, 0.2, 0.1]]
    )
    perfect = lambda img, txt: (txt_to_img[txt] == img).float()  # noqa: E731
    calls: list[int] = []

    def scorer(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        calls.append(len(img))
        return perfect(img, txt)

    metrics = reranked_retrieval_metrics(sim, txt_to_img, 3, scorer)
    assert metrics['i2t_R@1'] == 1.0 and metrics['t2i_R@1'] == 1.0
    assert sum(calls) <= 3 * 3 + 6 * 3 and len(calls) == 1  # every distinct pair scored once


def test_retrieval_metric_reranks_with_the_model() -> None:
    model = _build(PRETRAIN)
    images, _ = _batch()
    samples = [BaseDataElement(gt_captions=[text, text + ' again'], metainfo=dict(img_id=i))
               for i, text in enumerate(CAPTIONS)]  # fmt: skip
    preds = model(images, samples, mode='predict')
    assert preds[0].img_emb.shape == (16,) and preds[0].txt_emb.shape == (2, 16)
    assert len(preds[0].itm_inputs['txt_ids']) == 2 and 'ITMScorer' in repr(preds[0].itm_scorer)
    metric = RetrievalMetric(rerank_k=3)
    metric.process({}, [pred.to_dict() for pred in preds])
    assert all('itm_scorer' not in result for result in metric.results)
    metrics = metric.evaluate(len(preds))
    for key in (
        'retrieval/i2t_R@1',
        'retrieval/itm_i2t_R@1',
        'retrieval/itm_t2i_R@5',
        'retrieval/itm_t2i_medr',
    ):
        assert key in metrics
    assert 0.0 <= metrics['retrieval/itm_i2t_R@1'] <= 1.0
    # The scores the metric used are the model's ITM scores of those pairs.
    scores = model.itm_scores(images[:1].expand(2, -1, -1, -1), preds[0].itm_inputs['txt_ids'])
    direct = model.itm_logits(
        images[:1].expand(2, -1, -1, -1),
        *model._tokenize([CAPTIONS[0], CAPTIONS[0] + ' again'], images.device),
    )
    assert torch.allclose(scores, direct[:, 1] - direct[:, 0], atol=1e-5)
    with pytest.raises(KeyError, match='itm_inputs and itm_scorer'):
        RetrievalMetric(rerank_k=3).process(
            {}, [{'img_id': 0, 'img_emb': torch.ones(4), 'txt_emb': torch.ones(1, 4)}]
        )


# ------------------------------------------------------------------------------------------------- configs
def _reduced(cfg: Config) -> dict:
    """The model config at tiny size: the tiny backbone and the Shapes World tokenizer (no local weights)."""
    model = cfg.model.to_dict()
    model.update(
        backbone=TINY_BACKBONE, tokenizer=dict(type='HFTokenizer', path=TOKENIZER, context_length=32)
    )
    model.update(embed_dim=16, head_dim=None, mask_token_id=None)
    return model


@pytest.mark.parametrize('path', FIBER_CONFIGS, ids=lambda p: p.name)
def test_fiber_configs_build_and_train_one_step(path: Path) -> None:
    cfg = Config.fromfile(str(path))
    assert cfg.default_scope == 'toolkit'
    model = MODELS.build(_reduced(cfg) if 'shapes' not in path.name else cfg.model.to_dict())
    size = 32 if 'shapes' not in path.name else 64  # Swin runs any size; 64 px keeps the test fast
    images = [torch.randint(0, 255, (3, size, size), dtype=torch.uint8) for _ in range(2)]
    samples = [BaseDataElement(text=CAPTIONS[0]), BaseDataElement(text=CAPTIONS[1])]
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), training=True)
    losses = model(**data, mode='loss')
    total = sum(value for key, value in losses.items() if 'loss' in key)
    assert torch.isfinite(total)
    total.backward()


def test_configs_found() -> None:
    names = [p.name for p in FIBER_CONFIGS]
    assert any('coarse-pretrain' in n for n in names) and any('shapes-pretrain' in n for n in names)
    assert any('shapes-cap' in n for n in names)


# ---------------------------------------------------------------------------------------------- end to end
def _run(tool: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``tools/<tool>.py`` as ``__main__`` in this process (saves a second start-up of torch/mmdet)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv('LOCAL_RANK', '0')  # what the tools would set; restored afterwards
    monkeypatch.setattr(sys, 'argv', [f'tools/{tool}.py', *args])
    runpy.run_path(str(REPO / 'tools' / f'{tool}.py'), run_name='__main__')


@pytest.mark.slow
def test_pretrain_config_trains_and_tests(
    shapes_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two iterations of 8 pairs (the first 16 training images), then the test split's first 8 images (40
    captions) with ITM re-ranking of the top 4 both ways."""
    data = [f'{split}_dataloader.dataset.data_root={shapes_tiny}/' for split in ('train', 'val', 'test')]
    small = [f'{split}_dataloader.{key}' for split in ('train', 'val', 'test')
             for key in ('num_workers=0', 'persistent_workers=False')]  # fmt: skip
    subsets = ['train_dataloader.dataset.indices=16', 'val_dataloader.dataset.indices=8',
               'test_dataloader.dataset.indices=8']  # fmt: skip
    work = tmp_path / 'work'
    once = ['train_dataloader.batch_size=8', 'train_cfg.max_epochs=1', 'train_cfg.val_begin=2']  # no val
    _run('train', PRETRAIN_CONFIG, '--work-dir', str(work), '--cfg-options', *data, *small, *subsets, *once,
         monkeypatch=monkeypatch)  # fmt: skip
    ckpt = safe_load(work / 'epoch_1.pth')
    assert ckpt['meta']['iter'] == 2
    test_dir = tmp_path / 'test'
    _run('test', PRETRAIN_CONFIG, str(work / 'epoch_1.pth'), '--work-dir', str(test_dir), '--cfg-options',
         *data, *small, *subsets, 'test_evaluator.0.rerank_k=4', monkeypatch=monkeypatch)  # fmt: skip
    metrics = json.loads((test_dir / 'metrics.json').read_text())
    for key in ('retrieval/i2t_R@1', 'retrieval/t2i_R@10', 'retrieval/i2t_medr', 'retrieval/itm_i2t_R@1',
                'retrieval/itm_t2i_R@5', 'retrieval/itm_t2i_medr'):  # fmt: skip
        assert key in metrics and isinstance(metrics[key], float), sorted(metrics)
    assert metrics['retrieval/itm_i2t_R@5'] >= metrics['retrieval/i2t_R@5'] - 1e-9  # top-4 set kept, k < 5
