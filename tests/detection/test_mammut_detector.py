"""MaMMUTDetector, its text-embedding box head, focal loss and simple pyramid: novel names never reach the
training loss, the frozen MaMMUT gets no gradient, text embeddings are computed once per name, predictions
index the given vocabulary in original coordinates, the score ensemble blends as configured, the backbone uses
the full (never cropped) positional embeddings, pretrained MaMMUT weights load into both copies of the ViT,
and a 2-iteration tools/train.py + tools/test.py run of the Shapes World config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.structures import InstanceData

from detection.models.mammut_detector import format_name
from detection.models.simple_pyramid import SimpleFeaturePyramid
from detection.models.text_bbox_head import SoftmaxFocalLoss
from toolkit.checkpoint import safe_load
from toolkit.registry import DATASETS, MODELS

REPO = Path(__file__).resolve().parents[2]
CONFIG = 'configs/mammut/mammut_vit-tiny-dec4_sfp-rcnn_1xb16-12e_shapes-ov.py'
PRETRAIN_CONFIG = 'configs/mammut/mammut_vit-tiny-dec4_1xb32-30e_shapes-ovd-pretrain.py'
NAMES = ('red circle', 'blue square', 'green star', 'white cross')


def _cfg(**model: object) -> Config:
    cfg = Config.fromfile(str(REPO / CONFIG))
    cfg.model.pretrained = None
    cfg.model.update(model)
    return cfg


def _model(seed: int = 0, **model: object):
    torch.manual_seed(seed)
    detector = MODELS.build(_cfg(**model).model)
    detector.init_weights()
    return detector


def _sample(boxes: list[list[float]], labels: list[int], names=NAMES, size: int = 64) -> DetDataSample:
    sample = DetDataSample(
        metainfo=dict(text=names, img_shape=(size, size), ori_shape=(size, size), scale_factor=(1.0, 1.0))
    )
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), labels=torch.tensor(labels).long()
    )
    return sample


def _batch(model, samples: list[DetDataSample], size: int = 64, training: bool = True) -> dict:
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 255, (3, size, size), dtype=torch.uint8, generator=gen) for _ in samples]
    return model.data_preprocessor(dict(inputs=images, data_samples=samples), training=training)


# ------------------------------------------------------------------------------------------------ parts
def test_simple_feature_pyramid_levels() -> None:
    neck = SimpleFeaturePyramid(
        in_channels=32, out_channels=16, scale_factors=(4.0, 2.0, 1.0, 0.5), extra_pool=1
    )
    outs = neck([torch.randn(2, 32, 8, 8)])
    assert [tuple(o.shape) for o in outs] == [(2, 16, 32, 32), (2, 16, 16, 16), (2, 16, 8, 8), (2, 16, 4, 4),
                                              (2, 16, 2, 2)]  # fmt: skip
    with pytest.raises(ValueError, match='scale factor 3'):
        SimpleFeaturePyramid(in_channels=32, out_channels=16, scale_factors=(3.0,))


def test_pyramid_maps_are_contiguous_so_mmcv_roi_align_reads_them_right() -> None:
    """mmcv 2.1's CPU RoIAlign ignores strides: a channels-last map gives scrambled RoI features (the bug
    that kept the detector's classifier at chance). The pyramid hands out contiguous maps."""
    from mmcv.ops import RoIAlign
    from torchvision.ops import roi_align

    neck = SimpleFeaturePyramid(in_channels=32, out_channels=16, scale_factors=(2.0, 1.0, 0.5), extra_pool=1)
    rois = torch.tensor(
        [[0.0, 4.0, 6.0, 60.0, 50.0], [1.0, 20.0, 2.0, 40.0, 30.0], [1.0, 0.0, 0.0, 64.0, 64.0]]
    )
    for level, img_map in enumerate(neck([torch.randn(2, 32, 8, 8)])):
        assert img_map.is_contiguous()
        scale = img_map.shape[-1] / 64
        ours = RoIAlign(7, spatial_scale=scale, sampling_ratio=0, aligned=True)(img_map, rois)
        reference = roi_align(img_map, rois, 7, spatial_scale=scale, sampling_ratio=0, aligned=True)
        torch.testing.assert_close(ours, reference, msg=f'level {level}')


def test_softmax_focal_loss_is_cross_entropy_at_gamma_0_and_down_weights_easy_examples() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, -1.0]])
    labels = torch.tensor([0, 1, 2])
    ce = F.cross_entropy(logits, labels, reduction='none')
    torch.testing.assert_close(SoftmaxFocalLoss(gamma=0.0, reduction='none')(logits, labels), ce)
    focal = SoftmaxFocalLoss(gamma=2.0, reduction='none')(logits, labels)
    p_t = torch.exp(-ce)
    torch.testing.assert_close(focal, (1 - p_t) ** 2 * ce)
    assert focal[0] / ce[0] < 0.01 < focal[2] / ce[2]  # the easy example counts least
    weighted = SoftmaxFocalLoss(gamma=2.0)(
        logits, labels, weight=torch.tensor([1.0, 0.0, 1.0]), avg_factor=2.0
    )
    torch.testing.assert_close(weighted, (focal[0] + focal[2]) / 2)


def test_box_head_scores_regions_by_cosine_against_the_vocabulary_and_a_background() -> None:
    model = _model()
    head = model.roi_head.bbox_head
    whitening = head.text_whitening  # the Shapes World config whitens; first the plain classifier
    head.text_whitening = None
    txt_emb = F.normalize(torch.randn(5, head.embed_dim), dim=-1)
    head.set_vocabulary(txt_emb)
    rois = torch.randn(7, head.in_channels, 7, 7)
    cls_score, bbox_pred = head(rois)
    assert cls_score.shape == (7, 6) and bbox_pred.shape == (7, 4) and head.num_classes == 5
    region, _ = head.region_embedding(rois)
    background = F.normalize(head.bg_embedding, dim=0)[None]
    classes = torch.cat([txt_emb, background])
    torch.testing.assert_close(cls_score, head.current_logit_scale() * region @ classes.t())
    # Whitening: fitted once on the first vocabulary (mean and (cov + eps I)^-1/2), kept for the next ones.
    head.text_whitening = whitening
    base = F.normalize(torch.randn(40, head.embed_dim) + 3.0, dim=-1)  # crowded around one direction
    head.set_vocabulary(base)
    assert bool(head.whitening_fitted)
    centred = (base - base.mean(0)).double()
    cov = centred.t() @ centred / 40
    eigvals, eigvecs = torch.linalg.eigh(cov)
    expected_w = (
        eigvecs @ torch.diag((eigvals.clamp(min=0) + whitening * eigvals.max()).rsqrt()) @ eigvecs.t()
    )
    torch.testing.assert_close(head.txt_whiten.double(), expected_w, atol=1e-4, rtol=1e-3)
    head.set_vocabulary(txt_emb)  # a new vocabulary goes through the base names' map
    torch.testing.assert_close(head.txt_whiten.double(), expected_w, atol=1e-4, rtol=1e-3)
    whitened = F.normalize((txt_emb - base.mean(0)) @ head.txt_whiten, dim=-1)
    cls_score, _ = head(rois)
    torch.testing.assert_close(
        cls_score, head.current_logit_scale() * region @ torch.cat([whitened, background]).t()
    )
    with pytest.raises(ValueError, match='text embeddings must be'):
        head.set_vocabulary(torch.randn(5, head.embed_dim + 1))


def test_format_name_uses_an_before_vowels() -> None:
    assert format_name('a {}', 'orange circle') == 'an orange circle'
    assert format_name('a photo of a {}.', 'red star') == 'a photo of a red star.'
    assert format_name('{}', 'apple') == 'apple'


# ------------------------------------------------------------------------------------------------ training
def test_novel_names_never_reach_the_training_loss(shapes_tiny: Path) -> None:
    """The Shapes World training set lists base names only; the text decoder embeds only those, the box head's
    classes are exactly the batch's names, and the loss reaches the detector but not the frozen MaMMUT."""
    cfg = _cfg()
    dataset_cfg = cfg.train_dataloader.dataset
    dataset_cfg.data_root = f'{shapes_tiny}/'
    dataset = DATASETS.build(dataset_cfg)
    split = json.loads((shapes_tiny / 'annotations/ov_split.json').read_text())
    model = _model()
    encoded: list[str] = []
    encode_text = model.vlm.encode_text

    def spy(texts: list[str]) -> torch.Tensor:
        encoded.extend(texts)
        return encode_text(texts)

    model.vlm.encode_text = spy
    batch = pseudo_collate([dataset[i] for i in range(4)])
    data = model.data_preprocessor(batch, training=True)
    boxes_before = [s.gt_instances.bboxes.clone() for s in data['data_samples']]
    names_of_boxes = [
        [s.text[label] for label in s.gt_instances.labels.tolist()] for s in data['data_samples']
    ]
    model.train()
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    loss.backward()
    assert encoded and {text.split(' ', 1)[1] for text in encoded} == set(split['base'])
    assert not any(novel in text for text in encoded for novel in split['novel'])
    assert model.roi_head.bbox_head.num_classes == len(split['base'])
    # Labels now index the batch vocabulary and still name the same categories.
    batch_names = list(dict.fromkeys(n for s in data['data_samples'] for n in s.text))
    for sample, names, boxes in zip(data['data_samples'], names_of_boxes, boxes_before, strict=True):
        assert [batch_names[i] for i in sample.gt_instances.labels.tolist()] == names
        torch.testing.assert_close(sample.gt_instances.bboxes, boxes)
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.vlm.parameters())
    assert model.roi_head.bbox_head.fc_cls.weight.grad.abs().sum() > 0
    assert model.backbone.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert not model.vlm.training and model.backbone.training


def test_a_batch_of_different_vocabularies_trains_on_their_union() -> None:
    model = _model().train()
    other = ('black hexagon', 'red circle')
    samples = [_sample([[4, 6, 30, 28]], [2]), _sample([[10, 10, 40, 50]], [0], names=other)]
    data = _batch(model, samples)
    model(**data, mode='loss')
    assert model.roi_head.bbox_head.num_classes == 5  # 4 + 'black hexagon'
    union = list(NAMES) + ['black hexagon']
    assert [union[s.gt_instances.labels.item()] for s in data['data_samples']] == [
        'green star',
        'black hexagon',
    ]
    with pytest.raises(ValueError, match='gt label 7'):
        model(**_batch(model, [_sample([[4, 6, 30, 28]], [7])]), mode='loss')


def test_loss_falls_on_a_tiny_batch() -> None:
    model = _model().train()
    samples = [_sample([[4, 6, 30, 28], [34, 30, 60, 62]], [0, 2]), _sample([[10, 10, 40, 50]], [1])]
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = last = None
    for _ in range(12):
        data = _batch(model, [s.clone() for s in samples])
        loss, _ = model.parse_losses(model(**data, mode='loss'))
        optim.zero_grad()
        loss.backward()
        optim.step()
        first = float(loss) if first is None else first
        last = float(loss)
    assert last < 0.5 * first


# ------------------------------------------------------------------------------------------- vocabulary
def test_text_embeddings_batched_templates_averaged_and_nothing_cached() -> None:
    model = _model().eval()
    many = tuple(f'thing {i}' for i in range(1203))
    calls: list[int] = []
    encode = model.vlm.encode_text
    model.vlm.encode_text = lambda texts: calls.append(len(texts)) or encode(texts)
    first = model.text_embeddings(many)
    assert first.shape == (1203, model.vlm.embed_dim) and max(calls) <= 256
    assert sum(calls) == 1203 * len(model.templates)
    torch.testing.assert_close(model.text_embeddings(many[::-1]), first.flip(0))
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(1203))
    # An encoded vocabulary serves any number of predictions without a text pass; predict() encodes its own.
    vocabulary = model.encode_vocabulary(many[:48])
    calls.clear()
    data = _batch(model, [_sample([], [], names=many[:48]) for _ in range(3)], training=False)
    with torch.no_grad():
        by_vocabulary = model.predict_vocabulary(data['inputs'], data['data_samples'], vocabulary)
        assert calls == []
        by_predict = model.predict(data['inputs'], data['data_samples'])
    assert sum(calls) == 48 * len(model.templates)
    for a, b in zip(by_vocabulary, by_predict, strict=True):
        torch.testing.assert_close(a.pred_instances.scores, b.pred_instances.scores)
    # Nothing is kept in the model: new weights give new embeddings at once.
    state = {
        k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items() if v.is_floating_point()
    }
    model.load_state_dict(state, strict=False)
    changed = model.text_embeddings(many[:2])
    assert not torch.allclose(changed, first[:2])
    direct = F.normalize(encode([format_name(t, n) for n in many[:2] for t in model.templates]), dim=-1)
    torch.testing.assert_close(changed, direct)


def test_encode_vocabulary_checks_the_names() -> None:
    model = _model().eval()
    with pytest.raises(ValueError, match='no names'):
        model.encode_vocabulary([])
    with pytest.raises(ValueError, match=r'positions \[1\] are empty'):
        model.encode_vocabulary(['dog', ' '])
    assert model.encode_vocabulary(['dog', 'cat']).encoding.shape == (2, model.vlm.embed_dim)


# ------------------------------------------------------------------------------------------------ predict
def _test_dataset(root: Path):
    cfg = _cfg()
    dataset_cfg = cfg.test_dataloader.dataset
    dataset_cfg.data_root = f'{root}/'
    return DATASETS.build(dataset_cfg)


def _jitter(model, seed: int = 1):
    """Random but confident-enough weights: every class can pass a zero score threshold."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'norm' not in name.lower() and not name.startswith('vlm.'):
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
    return model.eval()


def test_predictions_are_in_original_coordinates_and_name_the_given_vocabulary(shapes_tiny: Path) -> None:
    model = _jitter(_model(test_cfg=dict(rcnn=dict(score_thr=0.0))))
    dataset = _test_dataset(shapes_tiny)
    data = model.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), training=False)
    with torch.no_grad():
        rescaled = model.predict(data['inputs'], [s.clone() for s in data['data_samples']], rescale=True)
        raw = model.predict(data['inputs'], [s.clone() for s in data['data_samples']], rescale=False)
    for ours, theirs in zip(rescaled, raw, strict=True):
        pred = ours.pred_instances
        assert len(pred) > 0 and ours.ori_shape == (128, 128) and ours.img_shape == (256, 256)
        torch.testing.assert_close(pred.bboxes * 2, theirs.pred_instances.bboxes)  # scale factor 2
        assert pred.bboxes.min() >= 0 and pred.bboxes[:, 2:].max() <= 128
        assert pred.labels.max() < len(ours.text) == 48
        assert pred.label_names == [ours.text[i] for i in pred.labels.tolist()]
    # Another vocabulary for the same images: labels index it.
    names = ('green star', 'red circle')
    samples = [s.clone() for s in data['data_samples']]
    for sample in samples:
        sample.set_metainfo(dict(text=names))
    with torch.no_grad():
        out = model.predict(data['inputs'], samples)
    assert {n for s in out for n in s.pred_instances.label_names} <= set(names)


def test_ensemble_blends_detector_and_region_probabilities_per_base_or_novel_name() -> None:
    model = _jitter(_model())
    model.ensemble = dict(alpha=0.25, beta=0.75)
    model.base_names = frozenset(NAMES[:2])
    images = _batch(model, [_sample([], [])], training=False)['inputs']
    rois = torch.tensor([[0, 2.0, 3.0, 40.0, 30.0], [0, 10.0, 10.0, 60.0, 60.0]])
    probs = torch.softmax(torch.randn(2, len(NAMES) + 1), dim=-1)
    with torch.no_grad():
        blended = model.ensemble_probs(images, rois, probs, model.encode_vocabulary(NAMES))
        region = model.region_embeddings(images, rois)
    txt_emb = model.text_embeddings(NAMES)
    vlm = (model.vlm.current_logit_scale() * region @ txt_emb.t()).softmax(dim=-1)
    weight = torch.tensor([0.25, 0.25, 0.75, 0.75])
    torch.testing.assert_close(blended[:, :-1], probs[:, :-1] ** (1 - weight) * vlm**weight)
    torch.testing.assert_close(blended[:, -1], probs[:, -1])
    # Region embeddings: RoI-aligned tokens of the whole image, or re-encoded crops.
    assert region.shape == (2, model.vlm.embed_dim)
    model.ensemble = dict(alpha=0.25, beta=0.75, region='crop')
    with torch.no_grad():
        crops = model.region_embeddings(images, rois)
    assert crops.shape == region.shape and not torch.allclose(crops, region)
    with pytest.raises(ValueError, match='ensemble'):
        _model(ensemble=dict(alpha=0.3, beta=1.5))
    with pytest.raises(ValueError, match='unknown ensemble keys'):
        _model(ensemble=dict(alpha=0.3, beta=0.5, gamma=1))


def test_ensemble_reads_base_names_from_an_ov_split_file(shapes_tiny: Path) -> None:
    split = shapes_tiny / 'annotations/ov_split.json'
    model = _model(ensemble=dict(alpha=0.35, beta=0.65, base_names=str(split)))
    assert model.base_names == frozenset(json.loads(split.read_text())['base'])


# ------------------------------------------------------------------------------------------------ weights
def test_backbone_uses_the_full_positional_embeddings_in_training() -> None:
    model = _model().train()
    encoder = model.backbone.encoder
    assert not encoder.cropped_pos_emb and model.vlm.image_encoder.cropped_pos_emb  # the config's pretraining
    images = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model.backbone(images)[0], model.backbone(images)[0])  # no random crop


def test_a_built_mammut_is_accepted_typed_with_the_same_state_dict_keys() -> None:
    """``vlm`` may be a built ``MaMMUT`` (detectron2 style): the backbone is a copy of its ViT (same weights,
    own parameters, full positional embeddings) and the detector's state dict has the keys of the
    config-built one, so checkpoints load either way."""
    from pretrain.models.mammut import MaMMUT

    model_cfg = _cfg().model.to_dict()
    from_config = MODELS.build(model_cfg)
    vlm = MODELS.build(model_cfg['vlm'])
    assert isinstance(vlm, MaMMUT)
    detector = MODELS.build({**model_cfg, 'vlm': vlm})
    assert detector.vlm is vlm and vlm.generation is None and not vlm.training
    assert detector.backbone.encoder is not vlm.image_encoder
    assert not detector.backbone.encoder.cropped_pos_emb
    for name, value in vlm.image_encoder.state_dict().items():
        assert torch.equal(detector.backbone.encoder.state_dict()[name], value)
    assert list(detector.state_dict()) == list(from_config.state_dict())
    with pytest.raises(TypeError, match='vlm must be a MaMMUT'):
        MODELS.build({**model_cfg, 'vlm': vlm.image_encoder, 'backbone': dict(type='MaMMUTViTBackbone',
                      encoder=model_cfg['vlm']['image_encoder'])})  # fmt: skip


def test_pretrained_mammut_weights_load_into_the_frozen_model_and_the_backbone(tmp_path: Path) -> None:
    torch.manual_seed(3)
    mammut = MODELS.build(Config.fromfile(str(REPO / PRETRAIN_CONFIG)).model)
    path = tmp_path / 'mammut.pth'
    torch.save({'state_dict': mammut.state_dict(), 'meta': {}}, path)
    model = _model(pretrained=str(path))
    for key, value in mammut.state_dict().items():
        torch.testing.assert_close(model.vlm.state_dict()[key], value)
    for key, value in mammut.image_encoder.state_dict().items():
        torch.testing.assert_close(model.backbone.encoder.state_dict()[key], value)
    wrong = tmp_path / 'wrong.pth'
    torch.save({'state_dict': {'image_encoder.pos_embed': torch.zeros(1)}}, wrong)
    with pytest.raises(ValueError, match='wrong.pth'):
        _model(pretrained=str(wrong))


# ------------------------------------------------------------------------------------------------ tools
@pytest.mark.slow
def test_train_two_iterations_and_test_the_shapes_config(
    shapes_tiny: Path, tmp_path: Path, run_tool, det_data_options
) -> None:
    """From a (random) MaMMUT pretraining checkpoint, as the config's ``pretrained`` expects."""
    torch.manual_seed(0)
    mammut = MODELS.build(Config.fromfile(str(REPO / PRETRAIN_CONFIG)).model)
    pretrained = tmp_path / 'mammut.pth'
    torch.save({'state_dict': mammut.state_dict()}, pretrained)
    work = tmp_path / 'work'
    options = [f'model.pretrained={pretrained}', *det_data_options(shapes_tiny, 'train')]
    run_tool('tools/train.py', CONFIG, '--work-dir', str(work), '--cfg-options', *options)
    checkpoint = safe_load(work / 'epoch_1.pth')
    assert checkpoint['meta']['iter'] == 2
    test_dir = tmp_path / 'test'
    run_tool('tools/test.py', CONFIG, str(work / 'epoch_1.pth'), '--work-dir', str(test_dir), '--cfg-options',
             'model.pretrained=None', *det_data_options(shapes_tiny, 'test'))  # fmt: skip
    metrics = json.loads((test_dir / 'metrics.json').read_text())
    for key in ('bbox_mAP', 'bbox_mAP_50_base', 'bbox_mAP_50_novel', 'bbox_mAP_base', 'bbox_mAP_novel'):
        assert f'coco/{key}' in metrics, sorted(metrics)
    assert metrics['coco/num_novel'] == 8 and metrics['coco/num_base'] == 40
