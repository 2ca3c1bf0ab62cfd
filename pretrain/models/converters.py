"""State-dict converters from open_clip checkpoints to MaMMUT's encoder and decoder.

* :func:`convert_open_clip_visual`: open_clip's ``VisionTransformer`` (class token, ``ln_pre``, resblocks with
  ``nn.MultiheadAttention``, ``ln_post``, ``proj``) -> :class:`~pretrain.models.vit.MaMMUTViT`. Build the ViT
  with :func:`open_clip_visual_kwargs` (``class_token=True, pre_norm=True, final_pool='tok', patch_bias=False,
  output_dim=...``) to reproduce open_clip's image feature exactly. Attention-pool (CoCa), layer-scale and
  custom-attention variants cannot be mapped and raise.
* :func:`convert_open_clip_text_to_decoder`: open_clip's text tower (``TextTransformer`` or the text part of a
  ``CLIP`` state dict) as the initialisation of the self-attention, MLP, embedding and final-norm weights of a
  :class:`~pretrain.models.text_decoder.MaMMUTTextDecoder`; cross-attention layers keep their init. Every
  input tensor is either mapped or listed in the returned ``unused`` dict with the reason.

Only tensor layouts are read here (no open_clip import). Note that open_clip pools the text at the EOS token
while MaMMUT mean-pools, so a converted ``text_projection`` is only a starting point.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from toolkit.checkpoint import strip_prefix

__all__ = [
    'convert_open_clip_text_to_decoder',
    'convert_open_clip_visual',
    'open_clip_visual_kwargs',
]

_BLOCK_MAP = {
    'ln_1.weight': 'norm1.weight',
    'ln_1.bias': 'norm1.bias',
    'ln_2.weight': 'norm2.weight',
    'ln_2.bias': 'norm2.bias',
    'mlp.c_fc.weight': 'mlp.fc1.weight',
    'mlp.c_fc.bias': 'mlp.fc1.bias',
    'mlp.c_proj.weight': 'mlp.fc2.weight',
    'mlp.c_proj.bias': 'mlp.fc2.bias',
}
_ATTN_MAP = {
    'attn.in_proj_weight': 'qkv.weight',
    'attn.in_proj_bias': 'qkv.bias',
    'attn.out_proj.weight': 'proj.weight',
    'attn.out_proj.bias': 'proj.bias',
}
_BLOCK_KEY = re.compile(r'^transformer\.resblocks\.(\d+)\.(.+)$')


def _part(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors under ``prefix``, without it (the other keys are left out)."""
    return strip_prefix({key: value for key, value in state_dict.items() if key.startswith(prefix)}, prefix)


def _map_block(key: str, attn_name: str) -> tuple[int, str] | None:
    """``transformer.resblocks.i.<suffix>`` -> (i, our suffix); None for other keys; raises if unknown."""
    match = _BLOCK_KEY.match(key)
    if match is None:
        return None
    index, suffix = int(match.group(1)), match.group(2)
    if suffix in _BLOCK_MAP:
        return index, _BLOCK_MAP[suffix]
    if suffix in _ATTN_MAP:
        return index, f'{attn_name}.{_ATTN_MAP[suffix]}'
    raise ValueError(
        f'cannot map open_clip block tensor {key!r}: layer scale (ls_*), cross-attention (ln_1_kv), '
        'qk-norm or '
        'scaled-cosine attention variants are not supported by our blocks'
    )


def _visual_part(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if any(key.startswith('visual.') for key in state_dict):
        return _part(state_dict, 'visual.')
    return dict(state_dict)


def open_clip_visual_kwargs(state_dict: Mapping[str, Tensor], *, num_heads: int) -> dict:
    """``MaMMUTViT`` keyword arguments that reproduce the open_clip visual tower of ``state_dict``.

    ``num_heads`` is not stored in a checkpoint and must be given. Cropped positional embeddings are off.
    """
    visual = _visual_part(state_dict)
    conv = visual['conv1.weight']
    num_pos = visual['positional_embedding'].shape[0] - 1
    side = int(round(num_pos**0.5))
    if side * side != num_pos:
        raise ValueError(
            f'non-square position grid ({num_pos} positions) cannot be inferred; build it by hand'
        )
    depth = 1 + max(int(m.group(1)) for m in map(_BLOCK_KEY.match, visual) if m is not None)
    return dict(
        img_size=side * conv.shape[-1],
        patch_size=conv.shape[-1],
        in_channels=conv.shape[1],
        embed_dim=conv.shape[0],
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=visual['transformer.resblocks.0.mlp.c_fc.weight'].shape[0] / conv.shape[0],
        class_token=True,
        pre_norm='ln_pre.weight' in visual,
        final_pool='tok',
        output_dim=visual['proj'].shape[1] if 'proj' in visual else None,
        patch_bias='conv1.bias' in visual,
        cropped_pos_emb=False,
    )


def convert_open_clip_visual(
    state_dict: Mapping[str, Tensor], *, with_proj: bool = True
) -> dict[str, Tensor]:
    """open_clip ``VisionTransformer`` state dict (bare or ``visual.*`` in a CLIP one) -> ``MaMMUTViT``'s.

    Args:
        state_dict: the tensors; keys may carry the ``visual.`` prefix.
        with_proj: map ``proj`` (D, E) to ``head.weight`` (E, D); False for a ViT without ``output_dim``.

    Raises:
        ValueError: on attention-pool (CoCa), layer-scale or other tensors we cannot map.
    """
    visual = _visual_part(state_dict)
    if any(key.startswith('attn_pool') for key in visual):
        raise ValueError(
            'open_clip attentional pooling (attn_pool*, CoCa towers) has no MaMMUTViT equivalent'
        )
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in visual.items():
        block = _map_block(key, 'attn')
        if block is not None:
            out[f'blocks.{block[0]}.{block[1]}'] = value
        elif key == 'conv1.weight':
            out['patch_embed.weight'] = value
        elif key == 'conv1.bias':
            out['patch_embed.bias'] = value
        elif key == 'class_embedding':
            out['cls_token'] = value.reshape(1, 1, -1)
        elif key == 'positional_embedding':
            out['cls_pos_embed'] = value[:1].reshape(1, 1, -1)
            out['pos_embed'] = value[1:].unsqueeze(0)
        elif key.startswith('ln_pre.'):
            out['norm_pre.' + key[len('ln_pre.') :]] = value
        elif key.startswith('ln_post.'):
            out['norm.' + key[len('ln_post.') :]] = value
        elif key == 'proj':
            if with_proj:
                out['head.weight'] = value.t().contiguous()
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f'open_clip visual tensors with no MaMMUTViT equivalent: {sorted(unknown)}')
    if 'cls_token' not in out or 'pos_embed' not in out:
        raise ValueError(
            'not an open_clip VisionTransformer state dict: class_embedding/positional_embedding missing'
        )
    return out


def _text_part(state_dict: Mapping[str, Tensor], unused: dict[str, str]) -> dict[str, Tensor]:
    if any(key.startswith('text.') for key in state_dict):  # CustomTextCLIP
        for key in state_dict:
            if not key.startswith('text.'):
                unused[key] = 'not part of the text tower'
        return _part(state_dict, 'text.')
    text = {}
    for key, value in state_dict.items():
        if key.startswith('visual.'):
            continue  # the image tower: see convert_open_clip_visual
        if key.startswith('text_decoder.'):
            unused[key] = 'CoCa multimodal decoder: a different layout, not mapped'
        else:
            text[key] = value
    return text


def _check_shape(name: str, value: Tensor, target: Mapping[str, Tensor], source: str) -> None:
    if name not in target:
        raise ValueError(f'{source} -> {name!r}: the decoder has no such tensor')
    if tuple(value.shape) != tuple(target[name].shape):
        raise ValueError(
            f'{source} has shape {tuple(value.shape)} but decoder {name!r} has {tuple(target[name].shape)}'
        )


def convert_open_clip_text_to_decoder(
    state_dict: Mapping[str, Tensor], decoder: nn.Module
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Map an open_clip text tower onto ``decoder`` (a ``MaMMUTTextDecoder``).

    Args:
        state_dict: ``TextTransformer`` tensors or a full ``CLIP``/``CustomTextCLIP`` state dict (``visual.*``
            tensors are skipped silently, other non-text tensors are reported unused).
        decoder: the target; shapes are checked against its ``state_dict()``.

    Returns:
        ``(tensors, unused)``: load with ``decoder.load_state_dict(tensors, strict=False)`` (the missing keys
        are the cross-attention layers and an untied LM head); ``unused`` maps each source key not loaded to
        the reason.

    Raises:
        ValueError: on a different depth, width, vocabulary or an unsupported block layout.
    """
    target = decoder.state_dict()
    unused: dict[str, str] = {}
    text = _text_part(state_dict, unused)
    out: dict[str, Tensor] = {}
    depth = getattr(decoder, 'depth', None)
    block_ids = {int(m.group(1)) for m in map(_BLOCK_KEY.match, text) if m is not None}
    if block_ids and depth is not None and max(block_ids) + 1 != depth:
        raise ValueError(f'open_clip text tower has {max(block_ids) + 1} layers, the decoder {depth}')
    for key, value in text.items():
        block = _map_block(key, 'self_attn')
        if block is not None:
            name = f'blocks.{block[0]}.{block[1]}'
        elif key == 'token_embedding.weight':
            name = 'token_embed.weight'
        elif key == 'positional_embedding':
            context = target['pos_embed'].shape[1]
            if value.shape[0] < context:
                raise ValueError(f'open_clip has {value.shape[0]} positions, the decoder needs {context}')
            if value.shape[0] > context:
                unused[f'{key}[{context}:]'] = f'positions beyond the decoder context_length {context}'
            value, name = value[:context].unsqueeze(0), 'pos_embed'
        elif key.startswith('ln_final.'):
            name = 'norm_final.' + key[len('ln_final.') :]
        elif key in ('text_projection', 'text_projection.weight'):
            value = value.t() if key == 'text_projection' else value  # parameter (W, E) vs Linear (E, W)
            if 'text_proj.weight' not in target or tuple(value.shape) != tuple(
                target['text_proj.weight'].shape
            ):
                unused[key] = 'projection size differs from the decoder embed_dim (or it has no projection)'
                continue
            name, value = 'text_proj.weight', value.contiguous()
        elif key == 'text_projection.bias':
            unused[key] = 'our text projection has no bias'
            continue
        elif key == 'attn_mask':
            unused[key] = 'causal-mask buffer: the decoder builds its masks itself'
            continue
        elif key == 'cls_emb':
            unused[key] = 'CoCa class embedding: MaMMUT mean-pools instead'
            continue
        elif key in ('logit_scale', 'logit_bias'):
            unused[key] = 'contrastive temperature/bias lives in the MaMMUT model: copy it there if wanted'
            continue
        else:
            raise ValueError(f'open_clip text tensor {key!r} has no decoder equivalent')
        _check_shape(name, value, target, repr(key))
        out[name] = value
    if 'token_embed.weight' not in out:
        raise ValueError('not an open_clip text tower: token_embedding.weight missing')
    return out, unused
