"""BEiT-3 against the official unilm retrieval model: the converter maps a random-init ``BEiT3ForRetrieval``
(tests/fixtures/beit3, made by its make_fixture.py from microsoft/unilm) into our ``BEiT3``, whose encoder
outputs, embeddings and similarity logits match the official ones; the 384 px retrieval config's test
pipeline and tokenizer reproduce unilm's preprocessing (pixels and token ids)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain.apis import ImageTextInferencer
from pretrain.models.beit3_converters import convert_unilm_beit3, unilm_beit3_backbone_kwargs
from toolkit.registry import MODELS

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / 'tests/fixtures/beit3'
CONFIG = REPO / 'configs/beit3/beit3_base-patch16-384-spm64k_unilm_coco-ret.py'
META = json.loads((FIXTURE / 'meta.json').read_text(encoding='utf-8'))
ATOL = 1e-4


@pytest.fixture(scope='module')
def official() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / 'official_outputs.safetensors'))


@pytest.fixture(scope='module')
def official_state() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / 'official_state_dict.safetensors'))


def _pixels(official: dict[str, torch.Tensor]) -> torch.Tensor:
    """unilm's normalised images (3, 3, 384, 384): ToTensor + Normalize(0.5, 0.5) of the resized uint8 image
    (make_fixture.py checks this equals its tensor), the image and its two flips as in the fixture."""
    image = (official['pixels_resized'].permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    image = image.unsqueeze(0)
    return torch.cat([image, image.flip(-1), image.flip(-2)])


def _model() -> torch.nn.Module:
    sizes = META['config']
    backbone = unilm_beit3_backbone_kwargs(load_file(str(FIXTURE / 'official_state_dict.safetensors')))
    backbone.update(type='MultiwayTransformer', num_heads=sizes['encoder_attention_heads'])
    return MODELS.build(
        dict(
            type='BEiT3',
            backbone=backbone,
            tokenizer=dict(type='HFTokenizer', path=str(FIXTURE / 'tokenizer.json'), context_length=64),
            mask_token_id=META['special_ids']['mask'],
            contrastive_loss=dict(type='InfoNCELoss'),
        )
    ).eval()


def test_fixture_records_the_official_code() -> None:
    assert META['official_repository'] == 'https://github.com/microsoft/unilm'
    assert len(META['official_commit']) == 40
    assert META['versions']['torchscale'] == '0.2.0'  # unilm/beit3 requirements.txt
    size = sum(path.stat().st_size for path in FIXTURE.glob('official_state_dict.safetensors'))
    assert size < 1_000_000


@torch.no_grad()
def test_converted_model_matches_official_outputs(official, official_state) -> None:
    tensors, skipped = convert_unilm_beit3(official_state)
    assert not skipped
    model = _model()
    model.load_state_dict(tensors, strict=True)
    images = _pixels(official)
    txt_ids, txt_mask = official['txt_ids'], official['padding_mask'] == 0

    txt_hidden = model.backbone(txt_ids=txt_ids, txt_mask=txt_mask).hidden
    diffs = {
        'img_hidden': model.backbone(images=images[:1]).hidden - official['img_hidden'],
        # padded positions are not outputs (torchscale keeps computing them)
        'txt_hidden': (txt_hidden - official['txt_hidden'])[txt_mask],
    }
    img_emb = model.image_embedding(images)
    txt_emb = model.text_embedding(txt_ids, txt_mask)
    logits = model.current_logit_scale() * img_emb @ txt_emb.t()
    diffs.update(
        img_emb=img_emb - official['img_emb'],
        txt_emb=txt_emb - official['txt_emb'],
        logits=logits - official['logits_per_image'],
    )
    worst = {name: float(diff.abs().max()) for name, diff in diffs.items()}
    assert max(worst.values()) <= ATOL, worst
    # The outputs discriminate: the three images and the three texts differ by far more than the tolerance.
    assert float((official['img_emb'][0] - official['img_emb'][1]).abs().max()) > 5 * ATOL
    assert float((official['txt_emb'][0] - official['txt_emb'][1]).abs().max()) > 5 * ATOL


@pytest.mark.slow  # a converter subprocess and the config through ImageTextInferencer
def test_config_pipeline_and_tokenizer_match_official(official, official_state, tmp_path: Path) -> None:
    """The converter script, then the 384 px config at the fixture's size through ImageTextInferencer: the
    test pipeline gives unilm's pixels, the tokenizer its ids, the model its embeddings."""
    src = tmp_path / 'official.pth'
    torch.save({'model': official_state}, src)  # the layout of the released .pth files
    dst = tmp_path / 'beit3_tiny_retrieval.safetensors'
    script = REPO / 'tools/model_converters/beit3_to_toolkit.py'
    done = subprocess.run(
        [sys.executable, str(script), str(src), str(dst)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    sizes = META['config']
    options = {
        'model.backbone.embed_dim': sizes['encoder_embed_dim'],
        'model.backbone.depth': sizes['encoder_layers'],
        'model.backbone.num_heads': sizes['encoder_attention_heads'],
        'model.backbone.ffn_dim': sizes['encoder_ffn_embed_dim'],
        'model.backbone.vocab_size': sizes['vocab_size'],
        'model.mask_token_id': META['special_ids']['mask'],
        'model.tokenizer.path': str(FIXTURE / 'tokenizer.json'),
    }
    inferencer = ImageTextInferencer(CONFIG, dst, cfg_options=options)
    image = str(FIXTURE / 'image.jpg')
    pixels = inferencer.preprocess(image)
    assert pixels.shape == (1, 3, 384, 384)
    assert float((pixels - _pixels(official)[:1]).abs().max()) <= 2 / 255  # 1/255 of the [0, 1] image

    txt_ids, txt_mask = inferencer.model.tokenizer.ids_and_mask(META['captions'], trim=False)
    assert torch.equal(txt_ids, official['txt_ids'])
    assert torch.equal(txt_mask, official['padding_mask'] == 0)

    assert float((inferencer.encode_image(image) - official['img_emb'][:1]).abs().max()) <= ATOL
    assert float((inferencer.encode_text(META['captions']) - official['txt_emb']).abs().max()) <= ATOL


@pytest.mark.slow  # two converter subprocesses
def test_converter_names_every_key_and_shape_it_cannot_fit(official_state, tmp_path: Path) -> None:
    broken = dict(official_state)
    broken['beit3.encoder.layers.0.unknown.weight'] = torch.zeros(1)
    broken['vqa_head.weight'] = torch.zeros(1)
    broken['vision_head.weight'] = torch.zeros(3, 3)
    del broken['language_head.weight']
    with pytest.raises(ValueError) as err:
        convert_unilm_beit3(broken)
    message = str(err.value)
    for name in (
        'beit3.encoder.layers.0.unknown.weight: cannot be mapped',
        'vqa_head.weight: cannot be mapped',
        'img_proj.weight: converted (3, 3), model (32, 32)',
        'txt_proj.weight: not in the checkpoint',
    ):
        assert name in message
    del broken['vision_head.weight']
    tensors, skipped = convert_unilm_beit3(broken, strict=False)  # leftovers allowed, and listed
    assert set(skipped) >= {'vqa_head.weight', 'beit3.encoder.layers.0.unknown.weight', 'txt_proj.weight'}
    assert 'logit_scale' in tensors

    src = tmp_path / 'broken.safetensors'
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in broken.items()}, str(src))
    script = REPO / 'tools/model_converters/beit3_to_toolkit.py'
    done = subprocess.run(
        [sys.executable, str(script), str(src), str(tmp_path / 'out.pth')],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and 'vqa_head.weight: cannot be mapped' in done.stderr
    done = subprocess.run(
        [sys.executable, str(script), str(src), str(tmp_path / 'out.pth'), '--no-strict'],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and 'skipped vqa_head.weight' in done.stdout
    assert 'backbone.text_embed.weight' in torch.load(tmp_path / 'out.pth', weights_only=True)
