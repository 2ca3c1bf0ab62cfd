"""open_clip -> MaMMUT converters: parity with open_clip's towers at random init (tiny sizes)."""

from __future__ import annotations

import pytest
import torch
from open_clip.transformer import TextTransformer, VisionTransformer

from pretrain.models.converters import (
    convert_open_clip_text_to_decoder,
    convert_open_clip_visual,
    open_clip_visual_kwargs,
)
from pretrain.models.text_decoder import MaMMUTTextDecoder
from pretrain.models.vit import MaMMUTViT
from toolkit.checkpoint import load_converted


def _open_clip_vit(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    cfg = dict(image_size=32, patch_size=8, width=64, layers=2, heads=4, mlp_ratio=4.0, output_dim=32)
    cfg.update(kwargs)
    return VisionTransformer(**cfg).eval()


def test_visual_parity_with_open_clip():
    ref = _open_clip_vit()
    with torch.no_grad():  # open_clip leaves LayerNorms at 1/0: randomise them so that they are checked too
        for name, param in ref.named_parameters():
            if 'ln_' in name:
                param.add_(0.1 * torch.randn_like(param))
    state = {f'visual.{k}': v for k, v in ref.state_dict().items()}  # as inside a CLIP state dict
    kwargs = open_clip_visual_kwargs(state, num_heads=4)
    assert kwargs['img_size'] == 32 and kwargs['depth'] == 2 and kwargs['output_dim'] == 32
    ours = MaMMUTViT(**kwargs).eval()
    assert load_converted(ours, convert_open_clip_visual(state)) == []
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = ref(images)
        got = ours.forward_pooled(images)
    assert (got - expected).abs().max() < 1e-4
    # the token path too (open_clip output_tokens=True returns ln_post(x)[:, 1:])
    ref.output_tokens = True
    with torch.no_grad():
        _, ref_tokens = ref(images)
        assert (ours(images) - ref_tokens).abs().max() < 1e-4


def test_visual_without_ln_pre_and_without_proj():
    ref = _open_clip_vit(no_ln_pre=True)
    state = ref.state_dict()
    kwargs = open_clip_visual_kwargs(state, num_heads=4)
    assert kwargs['pre_norm'] is False
    ours = MaMMUTViT(**{**kwargs, 'output_dim': None}).eval()
    assert load_converted(ours, convert_open_clip_visual(state, with_proj=False)) == []
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled = ours.forward_pooled(images)
        assert pooled.shape == (2, 64)
        assert (pooled @ ref.proj - ref(images)).abs().max() < 1e-4


def test_visual_unsupported_variants_raise():
    state = _open_clip_vit(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=4).state_dict()
    with pytest.raises(ValueError, match='attn_pool'):
        convert_open_clip_visual(state)
    state = _open_clip_vit(ls_init_value=0.1).state_dict()
    with pytest.raises(ValueError, match='layer scale'):
        convert_open_clip_visual(state)


def _open_clip_text(**kwargs) -> TextTransformer:
    torch.manual_seed(0)
    cfg = dict(
        context_length=16, vocab_size=50, width=64, heads=4, layers=2, output_dim=32, output_tokens=True
    )
    cfg.update(kwargs)
    return TextTransformer(**cfg).eval()


def _decoder(**kwargs) -> MaMMUTTextDecoder:
    torch.manual_seed(1)
    cfg = dict(
        vocab_size=50, context_length=16, width=64, depth=2, num_heads=4, embed_dim=32, tie_embeddings=False
    )
    cfg.update(kwargs)
    return MaMMUTTextDecoder(**cfg).eval()


def test_text_parity_with_open_clip_causal_tokens():
    ref = _open_clip_text()
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if 'ln_' in name or name.endswith('bias'):
                param.add_(0.1 * torch.randn_like(param))
    decoder = _decoder()
    tensors, unused = convert_open_clip_text_to_decoder(ref.state_dict(), decoder)
    assert unused == {}
    missing = load_converted(decoder, tensors)
    cross = {name for name, _ in decoder.cross_attention_parameters()}
    assert set(missing) == cross  # cross-attention and the untied LM head keep their init
    assert any('cross_attn' in name for name in missing) and 'lm_head.weight' in missing
    txt_ids = torch.randint(0, 50, (3, 16))
    with torch.no_grad():
        _, ref_tokens = ref(txt_ids)
        # causal self-attention + MLP stack without the image = open_clip's text transformer
        ours = decoder.encode_tokens(txt_ids, causal=True, img_ctx=None)
    assert (ours - ref_tokens).abs().max() < 1e-4


def test_text_full_clip_state_dict_reports_unused():
    ref = _open_clip_text(context_length=20)
    state = {k: v for k, v in ref.state_dict().items()}
    state['visual.conv1.weight'] = torch.zeros(1)
    state['logit_scale'] = torch.tensor(1.0)
    state['attn_mask'] = torch.zeros(20, 20)
    decoder = _decoder(embed_dim=16)  # projection size differs -> reported, not loaded
    tensors, unused = convert_open_clip_text_to_decoder(state, decoder)
    assert set(unused) == {'logit_scale', 'attn_mask', 'text_projection', 'positional_embedding[16:]'}
    assert all(isinstance(reason, str) and reason for reason in unused.values())
    assert 'text_proj.weight' not in tensors
    torch.testing.assert_close(tensors['pos_embed'][0], state['positional_embedding'][:16])


def test_text_shape_errors_are_clear():
    state = _open_clip_text().state_dict()
    with pytest.raises(ValueError, match='layers'):
        convert_open_clip_text_to_decoder(state, _decoder(depth=3))
    with pytest.raises(ValueError, match=r'token_embedding.*\(50, 64\).*\(60, 64\)'):
        convert_open_clip_text_to_decoder(state, _decoder(vocab_size=60))
    with pytest.raises(ValueError, match='positions'):
        convert_open_clip_text_to_decoder(state, _decoder(context_length=32))
