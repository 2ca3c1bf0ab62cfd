"""Every config under configs/ loads and its model builds and trains one step (reduced width where needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.structures import BaseDataElement, InstanceData

from toolkit.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / 'configs').rglob('*.py') if '_base_' not in p.parts)
# Paper-scale encoders/decoders are shrunk to this width/depth; patch sizes and layer patterns are kept.
REDUCED = dict(width=64, depth=2, heads=2)
# Detectors keep their neck/head layout; the fusion backbone and tokenizer become the Shapes World tiny ones
# (no local RoBERTa folder needed), the head narrows to 32 channels.
TINY_DETECTOR = REPO / 'configs/fiber/fiber_swin-tiny-roberta-tiny_fpn-dyhead_1xb16-24e_shapes-ov.py'
# FIBER pretraining models likewise get the Shapes World tiny fusion backbone and tokenizer.
TINY_FIBER = REPO / 'configs/fiber/fiber_swin-tiny-roberta-tiny_1xb32-30e_shapes-pretrain.py'
# BEiT-3 paper-scale models get the Shapes World tokenizer of the tiny BEiT-3.
TINY_BEIT3 = REPO / 'configs/beit3/beit3_tiny-patch16-128_1xb32-12e_shapes-mdm.py'
# ALBEF models get the Shapes World tokenizer (no local BERT folder) and, at paper scale, reduced widths.
TINY_ALBEF = REPO / 'configs/albef/albef_vit-tiny-bert-tiny_1xb32-20e_shapes.py'


def _reduce(model_cfg: dict) -> dict:
    enc, dec = model_cfg['image_encoder'], model_cfg['text_decoder']
    if enc.get('embed_dim', 0) > 256:
        enc.update(embed_dim=REDUCED['width'], depth=REDUCED['depth'], num_heads=REDUCED['heads'])
        enc.update(img_size=2 * enc.get('patch_size', 16))
        dec.update(width=REDUCED['width'], depth=REDUCED['depth'], num_heads=REDUCED['heads'])
        dec.pop('grad_checkpointing', None)
        if isinstance(dec.get('cross_attn_layers'), list):  # explicit indices (openMaMMUT): those that remain
            dec['cross_attn_layers'] = [i for i in dec['cross_attn_layers'] if i < REDUCED['depth']]
        # without a text projection (openMaMMUT) the decoder width is the embedding size
        model_cfg['embed_dim'] = REDUCED['width'] if model_cfg.get('txt_proj') is False else 32
    return model_cfg


def test_configs_found() -> None:
    assert any('shapes' in p.name for p in CONFIGS)
    assert len(CONFIGS) >= 4


def _detector_step(model_cfg: dict) -> None:
    tiny = Config.fromfile(str(TINY_DETECTOR)).model
    model_cfg.update(backbone=tiny.backbone.to_dict(), tokenizer=tiny.tokenizer.to_dict())
    model_cfg['neck'].update(in_channels=tiny.neck.in_channels, out_channels=32)
    model_cfg['bbox_head'].update(
        in_channels=32, feat_channels=32, lang_dim=tiny.bbox_head.lang_dim, num_dyhead_blocks=1, with_cp=False
    )
    model = MODELS.build(model_cfg)
    images = [torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8) for _ in range(2)]
    samples = [
        DetDataSample(metainfo=dict(text=('red circle', 'blue square', 'green star'), img_shape=(64, 64)))
        for _ in range(2)
    ]
    for sample, label in zip(samples, (0, 2), strict=True):
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[8.0, 10.0, 40.0, 44.0]]), labels=torch.tensor([label])
        )
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), training=True)
    losses = model(**data, mode='loss')
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total) and losses['loss_bbox'] > 0
    total.backward()
    optim.step()


def _mammut_detector_step(model_cfg: dict) -> None:
    """The MaMMUT detector with its vlm reduced, 32-channel neck and heads, no pretrained file, one step."""
    model_cfg['vlm'] = _reduce(model_cfg['vlm'])
    model_cfg.update(pretrained=None)
    if isinstance((model_cfg.get('ensemble') or {}).get('base_names'), str):  # a split file under data/
        model_cfg['ensemble']['base_names'] = ['red circle']
    model_cfg['neck'].update(out_channels=32)
    model_cfg['rpn_head'].update(in_channels=32, feat_channels=32)
    model_cfg['roi_head']['bbox_roi_extractor'].update(out_channels=32)
    model_cfg['roi_head']['bbox_head'].update(in_channels=32, fc_out_channels=64)
    model = MODELS.build(model_cfg)
    model.init_weights()
    images = [torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8) for _ in range(2)]
    samples = [
        DetDataSample(metainfo=dict(text=('red circle', 'blue square', 'green star'), img_shape=(64, 64)))
        for _ in range(2)
    ]
    for sample, label in zip(samples, (0, 2), strict=True):
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[8.0, 10.0, 40.0, 44.0]]), labels=torch.tensor([label])
        )
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), training=True)
    losses = model(**data, mode='loss')
    total, _ = model.parse_losses(losses)  # the RPN's losses are lists (one entry a level)
    assert torch.isfinite(total) and losses['loss_cls'] > 0
    total.backward()
    optim.step()


def _train_one_step(model: torch.nn.Module, images: list, samples: list) -> dict:
    """Preprocess, ``mode='loss'``, check the summed loss is finite, backward, one AdamW step; the losses."""
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), training=True)
    losses = model(**data, mode='loss')
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    optim.step()
    return losses


def _fiber_pretrain_step(model_cfg: dict) -> None:
    tiny = Config.fromfile(str(TINY_FIBER)).model
    model_cfg.update(backbone=tiny.backbone.to_dict(), tokenizer=tiny.tokenizer.to_dict())
    model = MODELS.build(model_cfg)
    images = [torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8) for _ in range(2)]
    samples = [
        BaseDataElement(text='a red circle above a blue square', img_id=0),
        BaseDataElement(text='two green stars', img_id=1),
    ]
    _train_one_step(model, images, samples)


def _albef_step(model_cfg: dict) -> None:
    model_cfg.update(tokenizer=Config.fromfile(str(TINY_ALBEF)).model.tokenizer.to_dict(), mask_token_id=None)
    model_cfg.update(text_pretrained=None, queue_size=8)
    enc, txt = model_cfg['image_encoder'], model_cfg['text_encoder']
    if enc['embed_dim'] > 256:
        enc.update(
            embed_dim=REDUCED['width'], depth=REDUCED['depth'], num_heads=REDUCED['heads'], img_size=32
        )
        txt.update(hidden_size=REDUCED['width'], num_layers=2, num_text_layers=1, num_heads=2, ffn_dim=128)
        model_cfg['embed_dim'] = 32
    model = MODELS.build(model_cfg)
    size = enc['img_size']
    images = [torch.randint(0, 255, (3, size, size), dtype=torch.uint8) for _ in range(2)]
    samples = [
        BaseDataElement(text='a red circle above a blue square', img_id=0),
        BaseDataElement(text='two green stars', img_id=1),
    ]
    losses = set(_train_one_step(model, images, samples))
    assert {'loss_itc', 'loss_itm'} <= losses
    assert ('loss_mlm' in losses) == model_cfg.get('with_mlm', True)  # retrieval configs: no MLM head


def _beit3_step(model_cfg: dict) -> None:
    """BEiT-3: a paper-scale backbone shrinks to REDUCED on 2 patches a side and takes the Shapes World
    tokenizer (no SentencePiece file needed); a VQ-KD target becomes a tiny random one (no checkpoint)."""
    backbone = model_cfg['backbone']
    if backbone['embed_dim'] > 256:
        backbone.update(embed_dim=REDUCED['width'], depth=REDUCED['depth'], num_heads=REDUCED['heads'])
        backbone.update(ffn_dim=2 * REDUCED['width'], num_vl_layers=1, img_size=2 * backbone['patch_size'])
        backbone.pop('vocab_size', None)
        model_cfg.update(
            tokenizer=Config.fromfile(str(TINY_BEIT3)).model.tokenizer.to_dict(), mask_token_id=None
        )
    target = model_cfg.get('visual_target') or {}
    if target.get('type') == 'VQKDTokenizer':
        target.update(img_size=backbone['img_size'], embed_dim=16, depth=1, num_heads=2, codebook_size=32)
        target.update(checkpoint=None)
    model = MODELS.build(model_cfg)
    size = backbone['img_size']
    images = [torch.randint(0, 255, (3, size, size), dtype=torch.uint8) for _ in range(3)]
    samples = [BaseDataElement(text=text) for text in ('a red circle', 'two green stars', 'a blue square')]
    _train_one_step(model, images, samples)


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.name)
def test_config_builds_and_trains_one_step(path: Path) -> None:
    cfg = Config.fromfile(str(path))
    assert cfg.default_scope == 'toolkit'
    for split in ('train', 'val', 'test'):
        dataset = cfg[f'{split}_dataloader']['dataset']
        if 'dataset' in dataset:  # a wrapper (ClassBalancedDataset, RepeatDataset)
            dataset = dataset['dataset']
        for part in dataset.get('datasets', [dataset]):  # a ConcatDataset: each part has its own root
            assert 'data_root' in part
    torch.manual_seed(0)
    if cfg.model.type == 'MaMMUTDetector':
        _mammut_detector_step(cfg.model.to_dict())
        return
    if 'bbox_head' in cfg.model:  # a detector (FIBER)
        _detector_step(cfg.model.to_dict())
        return
    if cfg.model.type == 'BEiT3':
        _beit3_step(cfg.model.to_dict())
        return
    if cfg.model.type == 'FIBER':  # FIBER coarse pretraining / captioning
        _fiber_pretrain_step(cfg.model.to_dict())
        return
    if cfg.model.type == 'ALBEF':
        _albef_step(cfg.model.to_dict())
        return
    model = MODELS.build(_reduce(cfg.model.to_dict()))
    size = model.image_encoder.img_size if hasattr(model.image_encoder, 'img_size') else 32
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = [torch.randint(0, 255, (3, size, size), dtype=torch.uint8) for _ in range(2)]
    samples = [
        BaseDataElement(text='a red circle above a blue square'),
        BaseDataElement(text='two green stars'),
    ]
    if model.video_tokenizer is not None:  # clips of the config's frame count (tube shapes need it)
        images = [torch.randint(0, 255, (3, cfg.num_frames, size, size), dtype=torch.uint8) for _ in range(2)]
        samples[1].question = 'which way does the star move?'
        samples[1].gt_answer = 'left'
        samples[0].question = ['what colour is the circle?']
        samples[0].gt_answer = ['red']
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), training=True)
    losses = model(**data, mode='loss')
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    assert model.video_tokenizer is None or 'loss_answer' in losses
    total.backward()
    optim.step()


def test_committed_shapes_tokenizer_matches_generator(shapes_tiny: Path) -> None:
    committed = (REPO / 'configs/_base_/tokenizers/shapes_world.json').read_text()
    assert committed == (shapes_tiny / 'tokenizer.json').read_text(), (
        'the Shapes World vocabulary changed: copy a freshly generated tokenizer.json to '
        'configs/_base_/tokenizers/'
    )
