"""ALBEF: BERT parity with transformers, momentum encoders, queues, hard negatives, distillation, training."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from mmengine.config import Config
from mmengine.structures import BaseDataElement

from pretrain.models.albef_losses import (
    DistilledContrastiveLoss,
    FeatureQueue,
    distilled_targets,
    soft_cross_entropy,
)
from pretrain.models.bert import BertFusionEncoder, convert_hf_bert
from pretrain.models.fiber_losses import sample_hard_negatives
from toolkit.checkpoint import safe_load
from toolkit.registry import MODELS

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'configs/albef/albef_vit-tiny-bert-tiny_1xb32-20e_shapes.py'
TEXTS = [
    'a red circle above a blue square',
    'two green stars',
    'a black triangle left of a red cross',
    'a blue circle',
]


def _tiny_model(**overrides) -> torch.nn.Module:
    cfg = Config.fromfile(str(CONFIG)).model.to_dict()
    cfg['image_encoder'].update(img_size=32, embed_dim=32, depth=1, num_heads=2, patch_stem='linear')
    cfg['text_encoder'].update(hidden_size=32, num_layers=2, num_text_layers=1, num_heads=2, ffn_dim=64)
    cfg.update({'embed_dim': 16, 'queue_size': 8, **overrides})
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def _batch(size: int = 4, seed: int = 0) -> tuple[torch.Tensor, list[BaseDataElement]]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, 32, 32, generator=gen)
    samples = [BaseDataElement(text=TEXTS[i % len(TEXTS)], img_id=i) for i in range(size)]
    return images, samples


# ----------------------------------------------------------------------------------------------- BERT
def test_bert_text_layers_match_transformers_bert() -> None:
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        attn_implementation='eager',
    )
    reference = transformers.BertModel(config).eval()
    ours = BertFusionEncoder(
        vocab_size=50,
        hidden_size=32,
        num_layers=3,  # a third, fusion layer that the text pass never runs
        num_text_layers=2,
        num_heads=4,
        ffn_dim=64,
        context_dim=24,
        max_positions=16,
    ).eval()
    converted, unused = convert_hf_bert(reference.state_dict())
    assert all(key.startswith('pooler.') or 'position_ids' in key for key in unused), unused
    missing, unexpected = ours.load_state_dict(converted, strict=False)
    assert not unexpected and all(key.startswith('layers.2.') for key in missing)
    txt_ids = torch.randint(1, 50, (3, 9))
    txt_mask = torch.ones(3, 9, dtype=torch.bool)
    txt_mask[1, 6:] = txt_mask[2, 4:] = False
    with torch.no_grad():
        expected = reference(input_ids=txt_ids, attention_mask=txt_mask.long()).last_hidden_state
        got = ours.encode_text(txt_ids, txt_mask)
    assert (got - expected)[txt_mask].abs().max() < 1e-5


def test_fusion_layers_read_the_image_and_ignore_masked_image_tokens() -> None:
    torch.manual_seed(0)
    bert = BertFusionEncoder(
        vocab_size=20, hidden_size=16, num_layers=2, num_text_layers=1, num_heads=2, ffn_dim=32, context_dim=8
    ).eval()
    txt_ids, txt_mask = torch.randint(1, 20, (2, 5)), torch.ones(2, 5, dtype=torch.bool)
    img = torch.randn(2, 6, 8)
    base = bert(txt_ids, txt_mask, img)
    assert not torch.allclose(base, bert(txt_ids, txt_mask, img + 1.0))
    img_mask = torch.ones(2, 6, dtype=torch.bool)
    img_mask[:, 4:] = False
    changed = img.clone()
    changed[:, 4:] = 100.0
    with torch.no_grad():
        a = bert.fuse(bert.encode_text(txt_ids, txt_mask), txt_mask, img, img_mask)
        b = bert.fuse(bert.encode_text(txt_ids, txt_mask), txt_mask, changed, img_mask)
    torch.testing.assert_close(a, b)


def test_text_pretrained_loads_a_hf_folder_and_names_a_bad_file(tmp_path: Path) -> None:
    transformers = pytest.importorskip('transformers')
    from pretrain.models.albef import ALBEF  # noqa: F401  (registration)

    config = transformers.BertConfig(
        vocab_size=129,  # the Shapes World vocabulary, whose last id stands in for [MASK] below
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    transformers.BertModel(config).save_pretrained(tmp_path / 'bert')
    reference = transformers.BertModel.from_pretrained(tmp_path / 'bert')
    model = _tiny_model(text_pretrained=str(tmp_path / 'bert'), mask_token_id=128)
    torch.testing.assert_close(
        model.text_encoder.layers[0].fc1.weight, reference.encoder.layer[0].intermediate.dense.weight
    )
    # the momentum copy starts from the loaded weights
    torch.testing.assert_close(
        model.momentum_model['text_encoder'].layers[0].fc1.weight, model.text_encoder.layers[0].fc1.weight
    )
    with pytest.raises(ValueError, match='bert.*word_embed'):
        _tiny_model(text_pretrained=str(tmp_path / 'bert'))  # 130 rows with an appended mask, 129 in the file


# ----------------------------------------------------------------------------------------------- momentum
def test_momentum_model_is_an_ema_without_gradients() -> None:
    torch.manual_seed(0)
    model = _tiny_model(momentum=0.9)
    ema = model.momentum_model
    assert all(not p.requires_grad for p in ema.parameters())
    online = dict(model.visual_encoder.named_parameters())
    before = {name: p.detach().clone() for name, p in ema['visual_encoder'].named_parameters()}
    torch.testing.assert_close(before['pos_embed'], online['pos_embed'].detach())  # copied at init
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith('momentum_model.'):
                p.add_(torch.randn_like(p) * 0.1)
    images, samples = _batch()
    losses = model.loss(images, samples)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    for name, p in ema['visual_encoder'].named_parameters():
        assert p.grad is None
        expected = 0.9 * before[name] + 0.1 * online[name].detach()
        torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-5)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith('momentum')]
    assert not [n for n in trainable if dict(model.named_parameters())[n].grad is None]


def test_alpha_ramps_over_the_warmup() -> None:
    model = _tiny_model(alpha=0.4, alpha_warmup_iters=10)
    assert model.current_alpha() == 0.0
    model.num_updates.fill_(5)
    assert math.isclose(model.current_alpha(), 0.2)
    model.num_updates.fill_(50)
    assert math.isclose(model.current_alpha(), 0.4)


# ----------------------------------------------------------------------------------------------- queues
def test_feature_queue_enqueues_in_order_and_wraps() -> None:
    queue = FeatureQueue(5, 2)
    assert not queue.valid.any()
    queue.enqueue(torch.arange(6.0).reshape(3, 2), torch.tensor([10, 11, 12]))
    assert queue.valid.tolist() == [True, True, True, False, False]
    assert queue.ids[:3].tolist() == [10, 11, 12] and int(queue.ptr) == 3
    queue.enqueue(
        torch.full((4, 2), 7.0), torch.tensor([20, 21, 22, 23])
    )  # wraps: 2 at the end, 2 at the start
    assert queue.ids.tolist() == [22, 23, 12, 20, 21] and int(queue.ptr) == 2 and queue.valid.all()
    assert queue.feats[2].tolist() == [4.0, 5.0]  # the oldest survivor
    queue.enqueue(torch.zeros(7, 2), torch.arange(7))  # more than fits: the last 5 are kept
    assert sorted(queue.ids.tolist()) == [2, 3, 4, 5, 6]
    state = queue.state_dict()
    assert {'feats', 'ids', 'ptr', 'count'} <= set(state)  # saved and resumed with the checkpoint


def test_model_queues_hold_the_momentum_features_of_past_batches() -> None:
    torch.manual_seed(0)
    model = _tiny_model(queue_size=6)
    images, samples = _batch(4)
    model.loss(images, samples)
    assert model.image_queue.ids[:4].tolist() == [0, 1, 2, 3] and int(model.image_queue.count) == 4
    with torch.no_grad():
        _, feat_m = model.image_features(images, momentum=True)
    # one more EMA step happened in loss(); features are unit vectors close to the current momentum ones
    assert torch.allclose(model.image_queue.feats[:4].norm(dim=1), torch.ones(4), atol=1e-5)
    assert (model.image_queue.feats[:4] * feat_m).sum(dim=1).min() > 0.99
    model.loss(images, samples)
    assert int(model.image_queue.count) == 6 and int(model.image_queue.ptr) == 2


# ------------------------------------------------------------------------------------------ ITM negatives
def test_global_hard_negatives_never_show_the_same_image() -> None:
    gen = torch.Generator().manual_seed(0)
    img_ids = torch.tensor([0, 0, 1, 2])  # local batch: two captions of image 0
    candidate_ids = torch.tensor([0, 0, 1, 2, 3, 3, 1, 4])  # gathered from two processes
    for _ in range(200):
        logits = torch.randn(4, 8, generator=gen) * 5
        logits[:, :2] += 50.0  # the positives are by far the most similar
        neg = sample_hard_negatives(
            logits, img_ids, logits_t2i=logits.flip(1), candidate_img_ids=candidate_ids, generator=gen
        )
        assert neg.img_valid.all() and neg.txt_valid.all()
        assert (candidate_ids[neg.txt_for_img] != img_ids).all()
        assert (candidate_ids[neg.img_for_txt] != img_ids).all()
    lonely = sample_hard_negatives(
        torch.zeros(1, 2),
        torch.tensor([5]),
        logits_t2i=torch.zeros(1, 2),
        candidate_img_ids=torch.tensor([5, 5]),
    )
    assert not lonely.img_valid.any() and not lonely.txt_valid.any()


def test_hard_negatives_follow_the_similarities() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[9.0, 8.0, -9.0, -9.0]]).repeat(2, 1)
    picks = [
        int(
            sample_hard_negatives(
                logits,
                torch.tensor([0, 9]),
                logits_t2i=logits,
                candidate_img_ids=torch.tensor([0, 1, 2, 3]),
                generator=gen,
            ).txt_for_img[0]
        )
        for _ in range(100)
    ]
    assert picks.count(1) > 95  # column 0 is the pair itself; column 1 is the hardest negative


# ----------------------------------------------------------------------------------------------- distillation
def test_distilled_targets_mix_hard_and_momentum() -> None:
    positives = torch.tensor([[True, False, True], [False, True, False]])
    logits_m = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, float('-inf')]])
    targets = distilled_targets(positives, logits_m, 0.4)
    soft = torch.softmax(logits_m, dim=1)
    torch.testing.assert_close(targets[0], 0.6 * torch.tensor([0.5, 0.0, 0.5]) + 0.4 * soft[0])
    torch.testing.assert_close(targets[1], 0.6 * torch.tensor([0.0, 1.0, 0.0]) + 0.4 * soft[1])
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(2))
    assert targets[1, 2] == 0  # a masked key gets no target


def test_distilled_contrastive_loss_reduces_to_cross_entropy_without_alpha() -> None:
    gen = torch.Generator().manual_seed(0)
    logits_i2t, logits_t2i = torch.randn(3, 7, generator=gen), torch.randn(3, 7, generator=gen)
    pos = torch.zeros(3, 7, dtype=torch.bool)
    pos[torch.arange(3), torch.arange(3)] = True
    loss = DistilledContrastiveLoss()(logits_i2t, logits_t2i, pos, pos, logits_i2t, logits_t2i, alpha=0.0)
    labels = torch.arange(3)
    expected = (
        torch.nn.functional.cross_entropy(logits_i2t, labels)
        + torch.nn.functional.cross_entropy(logits_t2i, labels)
    ) / 2
    torch.testing.assert_close(loss, expected)
    # with alpha = 1 and the momentum logits equal to the online ones the loss is their entropy (its minimum)
    self_distilled = DistilledContrastiveLoss()(
        logits_i2t, logits_i2t, pos, pos, logits_i2t, logits_i2t, alpha=1.0
    )
    entropy = -(torch.softmax(logits_i2t, 1) * torch.log_softmax(logits_i2t, 1)).sum(1).mean()
    torch.testing.assert_close(self_distilled, entropy)
    assert soft_cross_entropy(logits_i2t, torch.softmax(logits_i2t, 1)) <= expected + 10  # finite


def test_queue_positives_are_other_captions_of_the_same_image() -> None:
    torch.manual_seed(0)
    model = _tiny_model(queue_size=8)
    images, samples = _batch(4)
    model.loss(images, samples)  # queue: ids 0..3
    seen = {}
    original = model.itc_loss.forward

    def spy(logits_i2t, logits_t2i, pos_i2t, pos_t2i, *args, **kwargs):
        seen['pos'] = pos_i2t.clone()
        return original(logits_i2t, logits_t2i, pos_i2t, pos_t2i, *args, **kwargs)

    model.itc_loss.forward = spy
    model.loss(images, samples)
    # keys: 4 batch features, then 4 queued ones with the same image ids -> two positives per row
    assert seen['pos'].shape == (4, 8) and seen['pos'].sum(dim=1).tolist() == [2, 2, 2, 2]
    assert (
        seen['pos'][torch.arange(4), torch.arange(4)].all()
        and seen['pos'][torch.arange(4), torch.arange(4) + 4].all()
    )


# ----------------------------------------------------------------------------------------------- training
def test_loss_keys_finite_and_training_reduces_the_loss() -> None:
    torch.manual_seed(0)
    model = _tiny_model(alpha_warmup_iters=0)
    images, samples = _batch(4)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    totals = []
    for _ in range(12):
        losses = model.loss(images, samples)
        assert {'loss_itc', 'loss_itm', 'loss_mlm', 'acc_itm', 'acc_mlm', 'alpha', 'temp'} <= set(losses)
        total = sum(v for k, v in losses.items() if 'loss' in k)
        assert torch.isfinite(total)
        optim.zero_grad()
        total.backward()
        optim.step()
        totals.append(float(total.detach()))
    assert min(totals[-3:]) < totals[0]


def test_predict_gives_normalised_embeddings_and_an_itm_scorer() -> None:
    torch.manual_seed(0)
    model = _tiny_model().eval()
    images, _ = _batch(2)
    samples = [
        BaseDataElement(gt_captions=TEXTS[:2], img_id=0),
        BaseDataElement(gt_captions=TEXTS[2:], img_id=1),
    ]
    out = model.predict(images, samples)
    assert out[0].img_emb.shape == (16,) and out[1].txt_emb.shape == (2, 16)
    torch.testing.assert_close(out[1].txt_emb.norm(dim=1), torch.ones(2))
    scores = out[0].itm_scorer(images, out[1].itm_inputs['txt_ids'])
    direct = model.itm_scores(images, out[1].itm_inputs['txt_ids'])
    assert scores.shape == (2,) and torch.allclose(scores, direct)
    # the same pair scored alone or in a batch with padding gives the same score
    alone = model.itm_scores(images[1:], out[1].itm_inputs['txt_ids'][1:])
    torch.testing.assert_close(alone, direct[1:], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- 2 processes
def _worker(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same initial weights on both ranks
        model = _tiny_model(queue_size=16)
        images, samples = _batch(4, seed=rank)
        for sample in samples:
            sample.img_id = sample.img_id + 10 * rank
        seen = {}
        import pretrain.models.albef as albef_module

        original = albef_module.sample_hard_negatives

        def spy(*args, **kwargs):
            out = original(*args, **kwargs)
            seen['candidates'] = kwargs['candidate_img_ids'].tolist()
            return out

        albef_module.sample_hard_negatives = spy
        losses = model.loss(images, samples)
        sum(v for k, v in losses.items() if 'loss' in k).backward()
        queue.put((rank, seen['candidates'], model.image_queue.ids[:8].tolist()))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    queue.close()
    queue.join_thread()
    os._exit(0)  # skip the interpreter's shutdown (gloo's threads can abort it)


def test_two_processes_draw_negatives_from_the_global_batch_and_share_queues() -> None:
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    procs = [ctx.Process(target=_worker, args=(rank, port, queue), daemon=True) for rank in range(2)]
    for proc in procs:
        proc.start()
    try:
        results = {
            rank: (candidates, ids) for rank, candidates, ids in (queue.get(timeout=180) for _ in procs)
        }
    finally:
        for proc in procs:
            proc.join(timeout=120)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0, 0]
    everyone = [0, 1, 2, 3, 10, 11, 12, 13]
    for rank in range(2):
        candidates, queued = results[rank]
        assert candidates == everyone  # both processes' samples are candidates
        assert queued == everyone  # and both processes enqueue the whole global batch


# ----------------------------------------------------------------------------------------------- end to end
def _run(*args: str) -> None:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_train_resume_keeps_the_queues_and_test_reranks(shapes_tiny: Path, tmp_path: Path) -> None:
    work = tmp_path / 'work'
    data = [f'{split}_dataloader.dataset.data_root={shapes_tiny}/' for split in ('train', 'val', 'test')]
    small = [
        'train_cfg.max_epochs=1',
        'train_cfg.val_interval=10',
        'train_cfg.val_begin=1000',  # no validation: mmengine validates at the last epoch otherwise
        'train_dataloader.batch_size=8',
        'model.queue_size=64',
        'model.alpha_warmup_iters=2',
    ]
    _run('tools/train.py', str(CONFIG), '--work-dir', str(work), '--cfg-options', *data, *small)
    first = safe_load(work / 'epoch_1.pth')['state_dict']
    iters = int(first['num_updates'])
    assert iters > 0 and int(first['image_queue.count']) == min(64, 8 * iters)

    more = [opt.replace('max_epochs=1', 'max_epochs=2') for opt in small]
    _run('tools/train.py', str(CONFIG), '--work-dir', str(work), '--resume', '--cfg-options', *data, *more)
    second = safe_load(work / 'epoch_2.pth')['state_dict']
    assert int(second['num_updates']) == 2 * iters  # the step counter (alpha's ramp) resumed
    assert int(second['image_queue.ptr']) == (16 * iters) % 64  # the queue resumed where it stopped
    assert not second['momentum_model.text_proj.weight'].equal(first['momentum_model.text_proj.weight'])

    test_dir = tmp_path / 'test'
    rerank = 'test_evaluator.0.rerank_k=4'
    _run('tools/test.py', str(CONFIG), str(work / 'epoch_2.pth'), '--work-dir', str(test_dir),
         '--cfg-options', *data, rerank)  # fmt: skip
    metrics = json.loads((test_dir / 'metrics.json').read_text())
    for key in ('retrieval/i2t_R@1', 'retrieval/t2i_R@5', 'retrieval/itm_i2t_R@1', 'retrieval/itm_t2i_R@5'):
        assert 0.0 <= metrics[key] <= 1.0
