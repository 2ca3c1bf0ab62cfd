"""FIBERDetector and its grounding head: builds from the Shapes World config, loss is finite and reaches every
parameter, no box loss without boxes, text padding is hidden, the loss falls on a tiny batch, predictions are
in original-image coordinates with labels naming the right categories, chunked prompts merge like one prompt,
the prompt order matters only through position embeddings, the PyTorch DCN equals mmcv's, and a 2-iteration
tools/train.py + tools/test.py run of the Shapes World config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mmcv.ops import ModulatedDeformConv2d
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.structures import InstanceData

from detection.layers.deform_conv import modulated_deform_conv2d
from toolkit.checkpoint import safe_load
from toolkit.registry import DATASETS, METRICS, MODELS

REPO = Path(__file__).resolve().parents[2]
CONFIG = 'configs/fiber/fiber_swin-tiny-roberta-tiny_fpn-dyhead_1xb16-24e_shapes-ov.py'
NAMES = ('red circle', 'blue square', 'green star', 'white cross', 'black hexagon', 'yellow triangle')
SIZE = 64


def _model(seed: int = 0, **test_cfg: object):
    cfg = Config.fromfile(str(REPO / CONFIG)).model
    cfg.test_cfg.update(test_cfg)
    torch.manual_seed(seed)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def _fixed_weights(model, seed: int = 1):
    """Jitter every weight (so scores differ across classes and locations), open the fusion gates and centre
    the scores (``bias0 = 0``: probabilities around 0.5 instead of the 0.01 prior)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith('alpha'):
                param.fill_(0.5)
            elif name.endswith('bias0'):
                param.zero_()
            elif 'norm' not in name.lower():
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
    return model.eval()


def _sample(boxes: list[list[float]], labels: list[int], names=NAMES, scale: float = 1.0) -> DetDataSample:
    sample = DetDataSample(
        metainfo=dict(
            text=names,
            img_shape=(SIZE, SIZE),
            ori_shape=(round(SIZE / scale), round(SIZE / scale)),
            scale_factor=(scale, scale),
            pad_shape=(SIZE, SIZE),
            batch_input_shape=(SIZE, SIZE),
            img_id=0,
        )
    )
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.long),
    )
    return sample


def _images(n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 255, (3, SIZE, SIZE), dtype=torch.uint8, generator=gen) for _ in range(n)]


def _batch(model, samples, training=True, seed=0):
    return model.data_preprocessor(
        dict(inputs=_images(len(samples), seed), data_samples=samples), training=training
    )


def _total(losses: dict) -> torch.Tensor:
    return sum(v for k, v in losses.items() if 'loss' in k)


def test_loss_is_finite_and_reaches_every_parameter() -> None:
    model = _model()
    samples = [_sample([[4, 6, 30, 28], [34, 30, 60, 62]], [0, 2]), _sample([[2, 3, 62, 60]], [5])]
    losses = model(**_batch(model, samples), mode='loss')
    assert set(losses) == {'loss_cls', 'loss_bbox', 'loss_centerness'}
    assert all(torch.isfinite(v) for v in losses.values())
    _total(losses).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    # Closed gates (alpha = 0, FIBER's initialisation) pass no gradient into the cross-attention weights, and
    # a level's box scale only moves when ATSS puts positives there (32-64 px boxes: levels 0-1 of 3); every
    # other parameter gets a non-zero gradient.
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum()]
    allowed = [
        n for n in zero if '_cross_attn.' in n and not n.endswith('alpha') or n.endswith('scales.2.scale')
    ]
    assert zero == allowed, zero


def test_no_box_loss_without_ground_truth() -> None:
    model = _model()
    losses = model(**_batch(model, [_sample([], []), _sample([], [])]), mode='loss')
    assert losses['loss_bbox'].item() == 0 and losses['loss_centerness'].item() == 0
    assert 0 < losses['loss_cls'].item() < float('inf')


def test_text_padding_is_hidden() -> None:
    """A short prompt batched with a longer one (padded) gives the same logits on its real tokens."""
    model = _fixed_weights(_model())
    short, long = model.encode_prompt(NAMES[:2]), model.encode_prompt(NAMES)
    images = model.data_preprocessor(dict(inputs=_images(2), data_samples=[_sample([], [])] * 2))['inputs']
    with torch.no_grad():
        alone = model.bbox_head(
            *model.extract_feat(
                images[:1], short.input_ids[None], torch.ones(1, len(short.input_ids), dtype=torch.bool)
            )
        )
        ids = torch.full((2, len(long.input_ids)), model.tokenizer.pad_token_id)
        ids[0, : len(short.input_ids)], ids[1] = short.input_ids, long.input_ids
        together = model.bbox_head(*model.extract_feat(images, ids, ids != model.tokenizer.pad_token_id))
    length = len(short.input_ids)
    for a, b in zip(alone[0], together[0], strict=True):
        torch.testing.assert_close(a[0], b[0, :, :length], atol=1e-5, rtol=1e-5)
    for a, b in zip(alone[1], together[1], strict=True):
        torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)


def test_loss_decreases_on_a_tiny_batch() -> None:
    model = _model()
    samples = [_sample([[4, 6, 30, 28], [34, 30, 60, 62]], [0, 2]), _sample([[10, 10, 40, 44]], [5])]
    data = _batch(model, samples)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(12):
        losses = model(**data, mode='loss')
        optim.zero_grad()
        _total(losses).backward()
        optim.step()
        totals.append(_total(losses).item())
    assert totals[-1] < 0.7 * totals[0], totals


def test_loss_under_bf16_autocast_is_finite() -> None:
    model = _model()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = model(**_batch(model, [_sample([[4, 6, 30, 28]], [1])]), mode='loss')
    assert all(torch.isfinite(v.float()) for v in losses.values())


def test_predictions_are_in_original_coordinates_and_name_their_category(
    shapes_tiny: Path, tmp_path: Path
) -> None:
    model = _fixed_weights(_model(score_thr=0.0))
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(SIZE, SIZE), keep_ratio=True),  # 128 px images seen at 64 px
        dict(
            type='PackDetInputs',
            meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'text'),
        ),
    ]
    dataset = DATASETS.build(
        dict(
            type='OVCocoDataset',
            data_root=f'{shapes_tiny}/',
            ann_file='annotations/instances_test.json',
            data_prefix=dict(img='images/test/'),
            ov_split='annotations/ov_split.json',
            test_mode=True,
            pipeline=pipeline,
        )  # fmt: skip
    )
    data = model.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), training=False)
    with torch.no_grad():
        rescaled = model.predict(data['inputs'], [s.clone() for s in data['data_samples']], rescale=True)
        raw = model.predict(data['inputs'], [s.clone() for s in data['data_samples']], rescale=False)
    for ours, theirs in zip(rescaled, raw, strict=True):
        pred, plain = ours.pred_instances, theirs.pred_instances
        assert len(pred) > 0 and ours.ori_shape == (128, 128)
        torch.testing.assert_close(pred.bboxes, plain.bboxes * 2)  # scale factor 0.5
        assert pred.bboxes.min() >= 0 and pred.bboxes[:, 2:].max() <= 128
        assert pred.label_names == [ours.text[i] for i in pred.labels.tolist()]
    # The metric maps a label to the category id of that name.
    metric = METRICS.build(
        dict(type='OpenVocabCocoMetric', ann_file=str(shapes_tiny / 'annotations/instances_test.json'))
    )
    metric.dataset_meta = dataset.metainfo
    metric.cat_ids = dataset.cat_ids
    results = [
        dict(img_id=s.img_id, **{k: s.pred_instances[k].numpy() for k in ('bboxes', 'scores', 'labels')})
        for s in rescaled
    ]
    files = metric.results2json(results, str(tmp_path / 'predictions'))
    id_of = {
        c['name']: c['id']
        for c in json.loads((shapes_tiny / 'annotations/instances_test.json').read_text())['categories']
    }
    written = json.loads(Path(files['bbox']).read_text())
    names = [name for s in rescaled for name in s.pred_instances.label_names]
    assert [d['category_id'] for d in written] == [id_of[n] for n in names]


def test_chunk_merge_equals_one_prompt_exactly() -> None:
    """Head level: candidates of name chunks (same features) merge to the one-prompt detections."""
    model = _fixed_weights(_model(score_thr=0.0, nms_pre=50, max_per_img=30))
    prompt = model.encode_prompt(NAMES)
    data = _batch(model, [_sample([], [])], training=False)
    metas = [data['data_samples'][0].metainfo]
    with torch.no_grad():
        outs = model.bbox_head(
            *model.extract_feat(
                data['inputs'], prompt.input_ids[None], torch.ones(1, len(prompt.input_ids), dtype=torch.bool)
            )
        )
        whole = model.bbox_head.predict_by_feat(*outs, prompt.positive_map, metas)[0]
        chunks = [
            model.bbox_head.candidates_by_feat(
                *outs, prompt.positive_map[part], metas, label_offset=part.start
            )[0]
            for part in (range(0, 2), range(2, 5), range(5, 6))
        ]
        merged = model.bbox_head.merge_candidates(chunks, metas[0])
    assert len(whole) == 30
    torch.testing.assert_close(merged.bboxes, whole.bboxes)
    torch.testing.assert_close(merged.scores, whole.scores)
    assert torch.equal(merged.labels, whole.labels)


def test_chunked_prediction_keeps_labels_and_fits_one_chunk() -> None:
    data = _batch(_model(), [_sample([], [])], training=False)

    def predict(names, chunked_size):
        model = _fixed_weights(_model(score_thr=0.0, chunked_size=chunked_size, max_per_img=60))
        sample = data['data_samples'][0].clone()
        sample.set_metainfo(dict(text=names))
        with torch.no_grad():
            return model.predict(data['inputs'], [sample])[0].pred_instances

    # The whole vocabulary fits one chunk: chunked_size >= N is the one-prompt path.
    one, fits = predict(NAMES, -1), predict(NAMES, len(NAMES))
    torch.testing.assert_close(fits.scores, one.scores)
    assert torch.equal(fits.labels, one.labels)
    # Two identical chunks (the vocabulary listed twice): every detection of name i comes with the same box
    # and score under label i + 3, so chunk offsets and the merge are right.
    twice = predict(NAMES[:3] * 2, 3)
    first, second = twice.labels < 3, twice.labels >= 3
    assert first.sum() == second.sum() > 0
    key = lambda inst, mask, shift: sorted(  # noqa: E731
        (round(s, 5), int(lab) - shift, tuple(round(v, 3) for v in b))
        for s, lab, b in zip(
            inst.scores[mask].tolist(), inst.labels[mask], inst.bboxes[mask].tolist(), strict=True
        )
    )
    assert key(twice, first, 0) == key(twice, second, 3)


def _class_scores(model, images: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """Per image and class, the best score over locations (B, C), before NMS."""
    prompt = model.encode_prompt(names)
    ids = prompt.input_ids.expand(len(images), -1)
    with torch.no_grad():
        logits = model.bbox_head(*model.extract_feat(images, ids, torch.ones_like(ids, dtype=torch.bool)))[0]
    weights = prompt.positive_map.float() / prompt.positive_map.sum(-1, keepdim=True)
    return (torch.cat(logits, dim=1).sigmoid() @ weights.T).amax(dim=1)


def test_prompt_order_matters_only_through_position_embeddings() -> None:
    """Shuffled names give the same per-class scores up to float noise once the text has no positions: the
    fusion (cross-attention over the tokens) and the self-attention treat the prompt as a set, so what is left
    of the order is RoBERTa's absolute position embeddings. With them the scores move, by an amount that
    scales with the position embeddings: a trained FIBER sees shuffled prompts (SampleGroundingNames) and
    learns to discount them; the tolerance below is for this fixed-weight model."""
    model = _fixed_weights(_model())
    images = _batch(model, [_sample([], [])] * 2, training=False)['inputs']
    order = [4, 0, 5, 2, 1, 3]
    shuffled = tuple(NAMES[i] for i in order)

    def shuffle_effect() -> torch.Tensor:
        base = _class_scores(model, images, NAMES)
        moved = _class_scores(model, images, shuffled)
        back = torch.empty_like(moved)
        back[:, order] = moved
        return (back - base).abs().max()

    positions = model.backbone.text.embeddings.position_embeddings.weight
    full = shuffle_effect()
    assert (
        1e-3 < full < 0.05
    )  # the order matters a little: tolerance 0.05 on scores around 0.5 (measured 0.016)
    with torch.no_grad():
        positions.mul_(0.1)
    assert shuffle_effect() < full / 3  # the effect shrinks with the position embeddings
    with torch.no_grad():
        positions.zero_()
    assert shuffle_effect() < 1e-5  # and vanishes without them: only float noise is left


def test_torch_dcn_equals_mmcv_including_dyheads_mismatched_offsets() -> None:
    torch.manual_seed(0)
    for stride, size, offset_size in [
        (1, 8, 8),
        (2, 10, 5),
        (1, 5, 10),
    ]:  # the last: level l's offsets on l + 1
        conv = ModulatedDeformConv2d(6, 4, 3, stride=stride, padding=1).double()
        x = torch.randn(2, 6, size, size, dtype=torch.double, requires_grad=True)
        offset = (2 * torch.randn(2, 18, offset_size, offset_size, dtype=torch.double)).requires_grad_()
        mask = torch.rand(2, 9, offset_size, offset_size, dtype=torch.double, requires_grad=True)
        ref = conv(x, offset, mask)
        ours = modulated_deform_conv2d(x, offset, mask, conv.weight, conv.bias, stride=stride).double()
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
        grads_ref = torch.autograd.grad(ref.sin().sum(), [x, offset, mask, conv.weight])
        grads = torch.autograd.grad(ours.sin().sum(), [x, offset, mask, conv.weight])
        for a, b in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_tensor_mode_returns_the_head_outputs() -> None:
    model = _model(chunked_size=4)
    data = _batch(model, [_sample([], []), _sample([], [])], training=False)
    with torch.no_grad():
        cls_logits, bbox_preds, centernesses = model(**data, mode='tensor')
    length = len(model.encode_prompt(NAMES[:4]).input_ids)  # the first chunk's prompt
    assert [c.shape for c in cls_logits] == [(2, 64, length), (2, 16, length), (2, 4, length)]
    assert [b.shape[1] for b in bbox_preds] == [4, 4, 4] and [c.shape[1] for c in centernesses] == [1, 1, 1]


def test_training_prompts_of_the_shapes_config_name_base_categories_only(shapes_tiny: Path) -> None:
    cfg = Config.fromfile(str(REPO / CONFIG))
    dataset_cfg = cfg.train_dataloader.dataset
    dataset_cfg.data_root = f'{shapes_tiny}/'
    dataset = DATASETS.build(dataset_cfg)
    split = json.loads((shapes_tiny / 'annotations/ov_split.json').read_text())
    orders = set()
    for i in range(len(dataset)):
        sample = dataset[i]['data_samples']
        assert sorted(sample.text) == sorted(split['base'])  # every base name, no novel one
        names = [sample.text[label] for label in sample.gt_instances.labels.tolist()]
        info = dataset.get_data_info(i)  # every box keeps its own name
        assert sorted(names) == sorted(info['text'][inst['bbox_label']] for inst in info['instances'])
        orders.add(tuple(sample.text))
    assert len(orders) > 1  # shuffled per sample


@pytest.mark.slow
def test_train_two_iterations_and_test_the_shapes_config(
    shapes_tiny: Path, tmp_path: Path, fiber_shapes_run: Path, run_tool, det_data_options
) -> None:
    work = fiber_shapes_run  # tools/train.py, 2 iterations (tests/conftest.py)
    checkpoint = safe_load(work / 'epoch_1.pth')
    assert checkpoint['meta']['iter'] == 2
    test_dir = tmp_path / 'test'
    run_tool('tools/test.py', CONFIG, str(work / 'epoch_1.pth'), '--work-dir', str(test_dir), '--cfg-options',
             *det_data_options(shapes_tiny, 'test'), 'model.test_cfg.score_thr=0.0')  # fmt: skip
    metrics = json.loads((test_dir / 'metrics.json').read_text())
    for key in ('bbox_mAP', 'bbox_mAP_50_base', 'bbox_mAP_50_novel', 'bbox_mAP_base', 'bbox_mAP_novel'):
        assert f'coco/{key}' in metrics, sorted(metrics)
    assert metrics['coco/num_novel'] == 8 and metrics['coco/num_base'] == 40


def test_name_scores_are_the_mean_or_the_geometric_mean_of_token_probabilities() -> None:
    model = _fixed_weights(_model())
    data = _batch(model, [_sample([], [])], training=False)
    prompt = model.encode_prompt(NAMES)
    with torch.no_grad():
        cls_logits, bbox_preds, centernesses = model(**data, mode='tensor')
    metas = [data['data_samples'][0].metainfo]
    weights = prompt.positive_map.float() / prompt.positive_map.float().sum(dim=-1, keepdim=True)
    for name_score in ('mean', 'geometric'):
        cfg = dict(model.bbox_head.test_cfg, name_score=name_score, nms_pre=-1, score_thr=0.0)
        levels = model.bbox_head.candidates_by_feat(
            cls_logits, bbox_preds, centernesses, prompt.positive_map, metas, cfg=cfg
        )[0]
        probs = cls_logits[0][0].sigmoid()  # (H*W, L), the first level
        expected = probs @ weights.T if name_score == 'mean' else torch.exp(probs.log() @ weights.T)
        got = levels[0].scores.sort(descending=True).values
        torch.testing.assert_close(got, expected.flatten().sort(descending=True).values, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='name_score'):
        model.bbox_head.candidates_by_feat(
            cls_logits, bbox_preds, centernesses, prompt.positive_map, metas, cfg=dict(name_score='max')
        )
