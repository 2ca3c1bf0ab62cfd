"""openMaMMUT (LAION-AI/open_clip_mammut) -> our MaMMUT: outputs equal the official ones at random init.

The fixture (``tests/fixtures/openmammut/``, made by its ``make_fixture.py`` from the official code) holds two
reduced official models (``l14``: ``has_mlp`` and a ``logit_bias``; ``b32``: no ``has_mlp``), fixed inputs and
the official outputs. Each test converts the official state dict with our converter, builds our model from the
fixture's config and compares in float32 on CPU (max abs diff <= 1e-4).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from safetensors.torch import load_file

from pretrain.models.losses import contrastive_logits
from pretrain.models.openmammut_converters import (
    OpenMaMMUTConversionError,
    convert_openmammut,
    openmammut_cross_layers,
)
from toolkit.apis import init_model
from toolkit.checkpoint import load_converted, state_dict_mismatch
from toolkit.registry import MODELS, TOKENIZERS

FIXTURE = Path(__file__).resolve().parents[1] / 'fixtures' / 'openmammut'
REPO = FIXTURE.parents[2]
TOL = 1e-4
RELEASED = {
    'mammut_ViT-B-32': 'configs/mammut/mammut_openmammut-vit-b32-dec12_converted_datacomp-1.4b.py',
    'mammut_ViT-L-14': 'configs/mammut/mammut_openmammut-vit-l14-dec12_converted_datacomp-1.4b.py',
}


def _converted_model(variant: str):
    tensors, unused = convert_openmammut(load_file(str(FIXTURE / f'{variant}.safetensors')))
    assert unused == {}
    model = MODELS.build(Config.fromfile(str(FIXTURE / f'openmammut_{variant}-tiny_shapes.py')).model)
    assert state_dict_mismatch(tensors, model.state_dict()) == dict(missing=[], unexpected=[], shape=[])
    assert load_converted(model, tensors) == []  # every tensor of our model comes from the checkpoint
    return model.eval()


def _max_diff(ours: torch.Tensor, official: torch.Tensor) -> float:
    assert ours.shape == official.shape
    return float((ours.float() - official.float()).abs().max())


@pytest.mark.parametrize('variant', ['l14', 'b32'])
def test_outputs_equal_official(variant: str) -> None:
    meta = json.loads((FIXTURE / 'fixture.json').read_text())
    ref = load_file(str(FIXTURE / f'{variant}_outputs.safetensors'))
    model = _converted_model(variant)
    txt_ids = ref['txt_ids']
    # the tokenizer of the config gives the fixture's ids (padded to the context length, as the fork's)
    assert torch.equal(model.tokenizer(meta['texts']), txt_ids)
    with torch.no_grad():
        img_tokens = model.visual_tokens(ref['images'])
        img_emb = model.image_embedding(img_tokens)
        txt_emb = model.encode_text(meta['texts'])  # trims to the longest text, pads back for 'mean_all'
        logits_i2t = contrastive_logits(img_emb, txt_emb, model.current_logit_scale())[0]
        caption_logits = model.text_decoder.forward_generative(
            txt_ids, model.image_context(img_tokens[[0, 1, 0]])
        )
    diffs = {
        'img_emb': _max_diff(img_emb, ref['img_emb']),
        'txt_emb': _max_diff(txt_emb, ref['txt_emb']),
        'logits_i2t': _max_diff(logits_i2t, ref['logits_i2t']),
        'caption_logits': _max_diff(caption_logits, ref['caption_logits']),
    }
    if 'logits_sigmoid' in ref:
        assert model.logit_bias is not None
        with torch.no_grad():
            sigmoid = contrastive_logits(img_emb, txt_emb, model.current_logit_scale(), model.logit_bias)[0]
        diffs['logits_sigmoid'] = _max_diff(sigmoid, ref['logits_sigmoid'])
    else:
        assert model.logit_bias is None
    print(variant, diffs)
    assert all(diff <= TOL for diff in diffs.values()), diffs
    assert ref['caption_logits'].abs().max() > 0.1  # the fixture is not degenerate (zero-init head)


def test_incremental_decoding_equals_teacher_forcing() -> None:
    """Captioning runs the decoder step by step: the cached path gives the teacher-forced logits."""
    ref = load_file(str(FIXTURE / 'l14_outputs.safetensors'))
    model = _converted_model('l14')
    with torch.no_grad():
        img_ctx = model.image_context(model.visual_tokens(ref['images'][[0, 1, 0]]))
        cache = model.text_decoder.init_cache(img_ctx)
        steps = [model.text_decoder.step(ref['txt_ids'][:, i : i + 1], cache) for i in range(6)]
    assert _max_diff(torch.cat(steps, dim=1), ref['caption_logits'][:, :6]) <= TOL


def test_cross_layers_follow_the_fork() -> None:
    assert openmammut_cross_layers(12, 2) == [0, 2, 4, 6, 8, 10]  # released ViT-B-32 / ViT-L-14 decoders
    assert openmammut_cross_layers(4, 2) == [0, 2]
    assert openmammut_cross_layers(12, 1) == list(range(12))


def test_unmappable_keys_are_all_named() -> None:
    state = load_file(str(FIXTURE / 'b32.safetensors'))
    state['text.cls_emb'] = torch.zeros(4)
    state['visual.attn_pool.query'] = torch.zeros(4)
    state['extra_head'] = torch.zeros(1)
    del state['map_viz2txt_kv']
    with pytest.raises(OpenMaMMUTConversionError) as info:
        convert_openmammut(state)
    message = str(info.value)
    for name in ('text.cls_emb', 'attn_pool', 'extra_head', 'map_viz2txt_kv missing'):
        assert name in message


def test_extra_token_rows_are_reported_unused() -> None:
    """The fork always builds 49408 token-embedding rows; rows past the head's vocabulary are left out."""
    state = load_file(str(FIXTURE / 'b32.safetensors'))
    emb = state['text.token_embedding.weight']
    state['text.token_embedding.weight'] = torch.cat([emb, torch.zeros(7, emb.shape[1], dtype=emb.dtype)])
    tensors, unused = convert_openmammut({f'module.{k}': v for k, v in state.items()})
    assert list(unused) == ['text.token_embedding.weight[129:]']
    assert tensors['text_decoder.token_embed.weight'].shape[0] == 129


@pytest.mark.parametrize('name', sorted(RELEASED))
def test_released_size_config_takes_every_official_tensor(name: str) -> None:
    """The released sizes' official state dicts (key -> shape, from make_fixture.py) convert into the
    full-size config's model with every key and shape matching; built on the meta device (no memory)."""
    shapes = json.loads((FIXTURE / 'released_shapes.json').read_text())[name]
    official = {key: torch.empty(shape, device='meta') for key, shape in shapes.items()}
    tensors, unused = convert_openmammut(official)
    assert unused == {}
    cfg = Config.fromfile(str(REPO / RELEASED[name]))
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    assert state_dict_mismatch(tensors, model.state_dict()) == dict(missing=[], unexpected=[], shape=[])


def test_converter_script_roundtrip(tmp_path: Path, run_tool) -> None:
    dst = tmp_path / 'l14.safetensors'
    config = str(FIXTURE / 'openmammut_l14-tiny_shapes.py')
    run_tool('tools/model_converters/openmammut_to_toolkit.py', str(FIXTURE / 'l14.safetensors'), str(dst),
             '--config', config)  # fmt: skip
    model = init_model(config, dst)  # strict load: every key present, every shape right
    assert model.logit_bias is not None


def test_preprocessing_equals_official() -> None:
    """The released config's test pipeline, data preprocessor and tokenizer give the fork's pixels (within
    1/255) and token ids on ``sample.jpg`` (official: open_clip's eval transform of ``mammut_ViT-L-14``,
    224 px bicubic short-edge resize + centre crop + OpenAI mean/std, and ``get_tokenizer``, 77 tokens)."""
    from mmengine.dataset import Compose

    meta = json.loads((FIXTURE / 'fixture.json').read_text())['preprocess']
    ref = load_file(str(FIXTURE / 'preprocess_outputs.safetensors'))
    cfg = Config.fromfile(str(REPO / RELEASED['mammut_ViT-L-14']))
    pipeline = Compose(cfg.test_dataloader.dataset.pipeline)
    packed = pipeline(dict(img_path=str(FIXTURE / 'sample.jpg'), img_id=0))
    preprocessor = MODELS.build(cfg.model.data_preprocessor)
    pixels = preprocessor(dict(inputs=[packed['inputs']], data_samples=[packed['data_samples']]))['inputs'][0]
    std = torch.tensor(cfg.model.data_preprocessor.std)[:, None, None] / 255.0
    diff = ((pixels - ref['pixels'].float()) * std).abs().max()  # in [0, 1] pixel units
    print('pixel diff', float(diff))
    assert pixels.shape == (3, 224, 224) and diff <= 1 / 255
    tokenizer = TOKENIZERS.build(cfg.model.tokenizer)
    assert meta['tokenizer_context_length'] == tokenizer.context_length == 77
    assert torch.equal(tokenizer(meta['preprocess_texts']), ref['clip_ids'])


def test_tools_test_runs_a_converted_fixture_on_shapes_world(
    tmp_path: Path, shapes_tiny: Path, run_tool
) -> None:
    """Convert the fixture checkpoint, then ``tools/test.py`` evaluates retrieval and captioning on Shapes
    World tiny with it (numbers are meaningless at random init: the path is what is tested). The fixture model
    was made with the Shapes World tokenizer's ids, which its config uses."""
    ckpt = tmp_path / 'l14.safetensors'
    config = str(FIXTURE / 'openmammut_l14-tiny_shapes.py')
    run_tool('tools/model_converters/openmammut_to_toolkit.py', str(FIXTURE / 'l14.safetensors'), str(ckpt))
    work = tmp_path / 'work'
    run_tool('tools/test.py', config, str(ckpt), '--work-dir', str(work), '--cfg-options',
             f'test_dataloader.dataset.data_root={shapes_tiny}/',
             'test_dataloader.dataset.indices=16')  # fmt: skip
    metrics = json.loads((work / 'metrics.json').read_text())
    assert any('r1' in key.lower() or 'r@1' in key.lower() for key in metrics), metrics
    assert any('cider' in key.lower() or 'bleu' in key.lower() for key in metrics), metrics
