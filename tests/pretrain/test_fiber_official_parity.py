"""FIBERBackbone against the official FIBER coarse-grained code (microsoft/FIBER, commit in the fixture).

The fixture (``tests/fixtures/fiber/``, made by its ``make_fixture.py`` from the official code at random
init, reduced width, FIBER-B depths) holds the official state dict, inputs and the outputs of FIBER's own
``FIBERTransformerSS.infer``. Here the state dict goes through our converter into a ``FIBERBackbone`` built
with the released-weights config's switches, and every output must agree within 1e-4 (fp32, CPU).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope
from safetensors.torch import load_file

from pretrain.models.fiber_backbone import FIBERBackbone
from pretrain.models.fiber_converters import UNRECOGNISED, convert_fiber_state_dict
from toolkit.checkpoint import load_converted
from toolkit.registry import MODELS

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / 'tests/fixtures/fiber'
RELEASED = REPO / 'configs/fiber/fiber_swin-b-roberta-base_64xb64-100k_coco-cc3m-coarse-pretrain_released.py'
ATOL = 1e-4
REBUILT = ('relative_position_index', 'attn_mask', 'position_ids', 'token_type_ids')


@pytest.fixture(scope='module')
def meta() -> dict:
    return json.loads((FIXTURE / 'official_fiber_coarse.json').read_text())


@pytest.fixture(scope='module')
def io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / 'official_fiber_coarse_io.safetensors'))


def _backbone_cfg(meta: dict) -> dict:
    """The released config's backbone switches at the fixture's widths."""
    released = Config.fromfile(str(RELEASED)).model.backbone.to_dict()
    swin = meta['swin']
    image = dict(
        pretrain_img_size=meta['image_size'],
        patch_size=swin['patch_size'],
        embed_dims=swin['embed_dim'],
        depths=tuple(swin['depths']),
        num_heads=tuple(swin['num_heads']),
        window_size=swin['window_size'],
        mlp_ratio=int(swin['mlp_ratio']),  # mmdet wants an int (FIBER's float 2.0)
        drop_path_rate=0.0,
        out_indices=(3,),
    )
    text = {k: v for k, v in meta['text'].items()}
    switches = ('preset', 'image_query_norm', 'unshifted_stages', 'fused_text_last_norm')
    return dict(type='FIBERBackbone', image=image, text=text, **{k: released[k] for k in switches})


@pytest.fixture(scope='module')
def backbone(meta: dict) -> FIBERBackbone:
    init_default_scope('toolkit')
    model = MODELS.build(_backbone_cfg(meta))
    state_dict = load_file(str(FIXTURE / 'official_fiber_coarse.safetensors'))
    tensors, unused = convert_fiber_state_dict(state_dict)
    assert UNRECOGNISED not in unused.values()
    missing = load_converted(model, tensors)
    assert [k for k in missing if not k.endswith(REBUILT)] == []
    return model.eval()


def test_fixture_records_the_official_commit(meta: dict) -> None:
    assert meta['official_repo'] == 'https://github.com/microsoft/FIBER'
    assert len(meta['official_commit']) == 40
    assert meta['official_commit'] in (FIXTURE / 'make_fixture.py').read_text()
    assert (FIXTURE / 'official_fiber_coarse.safetensors').stat().st_size < 1_000_000


def test_fused_outputs_match_official(backbone: FIBERBackbone, io: dict) -> None:
    with torch.no_grad():
        out = backbone(io['images'], io['text_ids'], io['text_masks'])
    image_diff = (out.image_tokens - io['fused_image_tokens']).abs().max().item()
    text_diff = (out.text_hidden - io['fused_text_hidden']).abs().max().item()
    assert image_diff <= ATOL and text_diff <= ATOL, (image_diff, text_diff)
    # The fusion matters in these outputs (the gates are open in the fixture).
    assert (io['fused_image_tokens'] - io['fused_closed_image_tokens']).abs().max() > 1e-2


def test_closed_gates_match_official(backbone: FIBERBackbone, io: dict) -> None:
    alphas = [m.alpha for m in [*backbone.image_cross_attn, *backbone.text_cross_attn]]
    saved = [a.detach().clone() for a in alphas]
    try:
        with torch.no_grad():
            for alpha in alphas:
                alpha.zero_()
            out = backbone(io['images'], io['text_ids'], io['text_masks'])
    finally:
        with torch.no_grad():
            for alpha, value in zip(alphas, saved, strict=True):
                alpha.copy_(value)
    assert (out.image_tokens - io['fused_closed_image_tokens']).abs().max() <= ATOL
    assert (out.text_hidden - io['fused_closed_text_hidden']).abs().max() <= ATOL


def test_unimodal_outputs_match_official(backbone: FIBERBackbone, io: dict) -> None:
    with torch.no_grad():
        feats = backbone.encode_image(io['images']).image_feats[-1]
        text = backbone.encode_text(io['text_ids'], io['text_masks'])
    image_tokens = feats.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C), row-major as Swin
    assert (image_tokens - io['image_tokens_normed']).abs().max() <= ATOL
    assert (text - io['text_hidden']).abs().max() <= ATOL


def test_mmdet_swin_shifts_the_single_window_stage(meta: dict, io: dict) -> None:
    """Without ``unshifted_stages`` (mmdet's Swin) the last stage differs: the switch is what gives parity."""
    cfg = _backbone_cfg(meta)
    cfg['unshifted_stages'] = ()
    model = MODELS.build(cfg).eval()
    load_converted(
        model, convert_fiber_state_dict(load_file(str(FIXTURE / 'official_fiber_coarse.safetensors')))[0]
    )
    with torch.no_grad():
        out = model(io['images'], io['text_ids'], io['text_masks'])
    assert (out.image_tokens - io['fused_image_tokens']).abs().max() > 1e-3


def test_converter_script(tmp_path: Path, meta: dict) -> None:
    """tools/model_converters/fiber_to_toolkit.py, strict, against a config of the fixture's widths."""
    cfg = _backbone_cfg(meta)
    config = tmp_path / 'fiber_fixture.py'
    config.write_text(f"_base_ = '{RELEASED}'\nmodel = dict(backbone=dict(_delete_=True, **{cfg!r}))\n")
    dst = tmp_path / 'fiber.safetensors'
    cmd = [
        sys.executable,
        str(REPO / 'tools/model_converters/fiber_to_toolkit.py'),
        str(FIXTURE / 'official_fiber_coarse.safetensors'),
        str(dst),
        '--config',
        str(config),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    converted = load_file(str(dst))
    expected, _ = convert_fiber_state_dict(load_file(str(FIXTURE / 'official_fiber_coarse.safetensors')))
    assert set(converted) == set(expected)
    # A head-less, wider model does not fit: strict conversion names the shapes.
    config.write_text(config.read_text().replace("'embed_dims': 6", "'embed_dims': 12"))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and 'shape of image.patch_embed.projection.weight' in proc.stderr


def test_test_pipeline_matches_official_preprocessing(meta: dict, io: dict) -> None:
    """The released config's test pipeline + data preprocessor give FIBER's val transform within 1/255."""
    cfg = Config.fromfile(str(RELEASED))
    init_default_scope('toolkit')
    pipeline = Compose(cfg.test_pipeline)
    packed = pipeline(dict(img_path=str(FIXTURE / meta['preprocess']['image']), text='', img_id=0))
    preprocessor = MODELS.build(cfg.model.data_preprocessor)
    ours = preprocessor(dict(inputs=[packed['inputs']], data_samples=[packed['data_samples']]))['inputs'][0]
    mean = torch.tensor(meta['preprocess']['mean'])[:, None, None]
    std = torch.tensor(meta['preprocess']['std'])[:, None, None]
    official = (io['preprocess_resized_u8'].float() / 255 - mean) / std
    assert ours.shape == official.shape == (3, 384, 384)
    pixel_diff = ((ours - official) * std).abs().max().item()  # in [0, 1] pixel units
    assert pixel_diff <= 1 / 255 + 1e-6, pixel_diff
    assert np.isfinite(pixel_diff)
