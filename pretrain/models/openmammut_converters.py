"""State-dict converter from openMaMMUT (LAION-AI/open_clip_mammut, ``mammut_model.MaMMUT``) to our MaMMUT.

The released openMaMMUT checkpoints (e.g. ``openMaMMUT-ViT-L-14-DataComp-1.4B-s12.8B-b180K``) load into
:class:`~pretrain.models.mammut.MaMMUT` built with these switches (``configs/mammut/mammut_openmammut-*``),
which reproduce the fork's forward pass (read at commit ed2d1f6 of the fork):

* image embedding: mean of ALL ViT tokens, class token included, taken before ``ln_post``; then ``ln_post``
  and ``proj`` (``pool_type='avg_all'``, ``final_ln_after_pool``) -> ViT ``class_token=True,
  pre_norm=True, final_norm=False, keep_prefix_tokens=True, patch_bias=False``, MaMMUT ``pool='avg',
  pool_norm=True``;
* cross-attention keys/values: the same un-normed tokens (class token included) times ``map_viz2txt_kv``
  (no bias) -> ``img_ctx_proj='linear_no_bias'``;
* decoder: ``text.cross_attn[j]`` follows self-attention block ``j * cross_step`` (``cross_step = layers //
  (layers // cross_attn_ratio)``: blocks 0, 2, 4, ... for ratio 2, so the first block cross-attends and
  the last does not); each cross-attention has its own MLP, skipped with it in the contrastive pass; the
  self-attention blocks followed by a cross-attention have an MLP only with ``has_mlp`` (ViT-L-14 yes,
  ViT-B-32 no) -> decoder ``cross_attn_layers=[0, 2, ...], cross_attn_mlp=True,
  cross_layer_self_mlp=has_mlp``;
* contrastive text embedding: bidirectional pass with NO padding mask, mean over all context positions
  (padding included) after ``ln_final``, no projection -> ``contrastive_pool='mean_all'``, MaMMUT
  ``txt_proj=False`` (the decoder width is the embedding size);
* captioning head: ``text.text_projection`` (W, V), bias-free and untied -> ``tie_embeddings=False``;
* ``logit_scale`` (and ``logit_bias`` when the model was built with one; the fork's MaMMUT loss, CoCaLoss,
  never uses it).

The fork's text tower always builds a 49408-row token embedding whatever ``vocab_size`` says; rows past the
captioning head's vocabulary are returned as unused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from toolkit.checkpoint import strip_prefix

from .converters import convert_open_clip_visual

__all__ = ['OpenMaMMUTConversionError', 'convert_openmammut', 'openmammut_cross_layers']

_SELF_BLOCK = re.compile(r'^text\.resblocks\.(\d+)\.(.+)$')
_CROSS_BLOCK = re.compile(r'^text\.cross_attn\.(\d+)\.(.+)$')
_NORM_MLP = {
    'ln_2.weight': 'norm2.weight',
    'ln_2.bias': 'norm2.bias',
    'mlp.c_fc.weight': 'mlp.fc1.weight',
    'mlp.c_fc.bias': 'mlp.fc1.bias',
    'mlp.c_proj.weight': 'mlp.fc2.weight',
    'mlp.c_proj.bias': 'mlp.fc2.bias',
}
_SELF = {
    'ln_1.weight': 'norm1.weight',
    'ln_1.bias': 'norm1.bias',
    'attn.in_proj_weight': 'self_attn.qkv.weight',
    'attn.in_proj_bias': 'self_attn.qkv.bias',
    'attn.out_proj.weight': 'self_attn.proj.weight',
    'attn.out_proj.bias': 'self_attn.proj.bias',
    **_NORM_MLP,
}
_CROSS = {
    'ln_1.weight': 'norm_cross.weight',
    'ln_1.bias': 'norm_cross.bias',
    'ln_1_kv.weight': 'norm_kv.weight',
    'ln_1_kv.bias': 'norm_kv.bias',
    'attn.out_proj.weight': 'cross_attn.proj.weight',
    'attn.out_proj.bias': 'cross_attn.proj.bias',
    **{
        key: 'norm_cross_mlp.' + value[len('norm2.') :]
        for key, value in _NORM_MLP.items()
        if 'norm2' in value
    },
    **{key: 'cross_' + value for key, value in _NORM_MLP.items() if value.startswith('mlp.')},
}


class OpenMaMMUTConversionError(ValueError):
    """Tensors that cannot be mapped or do not fit; ``problems`` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__('openMaMMUT checkpoint cannot be converted:\n  ' + '\n  '.join(problems))


def openmammut_cross_layers(layers: int, cross_attn_ratio: int) -> list[int]:
    """Indices of the self-attention blocks followed by a cross-attention in the fork's decoder."""
    n_cross = layers // cross_attn_ratio
    if n_cross < 1:
        raise ValueError(f'cross_attn_ratio {cross_attn_ratio} leaves no cross-attention in {layers} layers')
    step = layers // n_cross
    indices = list(range(0, layers, step))
    if len(indices) != n_cross:  # the fork asserts the same
        raise ValueError(f'{layers} layers with cross_attn_ratio {cross_attn_ratio}: {indices} != {n_cross}')
    return indices


def _cross_positions(num_self: int, num_cross: int) -> list[int]:
    step = num_self // num_cross
    return [j * step for j in range(num_cross)]


def convert_openmammut(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """An openMaMMUT ``MaMMUT`` state dict -> our ``MaMMUT``'s.

    Args:
        state_dict: the fork's tensors (``visual.*``, ``text.*``, ``map_viz2txt_kv``, ``logit_scale``,
            optional ``logit_bias``); a ``module.`` prefix is removed.

    Returns:
        ``(tensors, unused)``: our keys -> tensors, and the source entries left out -> the reason.

    Raises:
        OpenMaMMUTConversionError: naming every tensor that has no counterpart.
    """
    state = strip_prefix(state_dict, 'module.')
    out: dict[str, Tensor] = {}
    unused: dict[str, str] = {}
    problems: list[str] = []

    visual = strip_prefix({k: v for k, v in state.items() if k.startswith('visual.')}, 'visual.')
    for key in ('ln_post.weight', 'ln_post.bias'):
        if key in visual:
            out['img_pool_norm.' + key.split('.')[-1]] = visual.pop(key)
    if 'proj' in visual:
        out['img_proj.weight'] = visual.pop('proj').t().contiguous()
    else:
        problems.append('visual.proj missing: not an openMaMMUT image tower')
    try:
        out.update(
            {f'image_encoder.{k}': v for k, v in convert_open_clip_visual(visual, with_proj=False).items()}
        )
    except ValueError as err:
        problems.append(f'visual: {err}')

    text = {k: v for k, v in state.items() if k.startswith('text.')}
    num_self = 1 + max((int(m.group(1)) for m in map(_SELF_BLOCK.match, text) if m), default=-1)
    num_cross = 1 + max((int(m.group(1)) for m in map(_CROSS_BLOCK.match, text) if m), default=-1)
    if num_self == 0 or num_cross == 0:
        problems.append(f'text tower has {num_self} self-attention and {num_cross} cross-attention blocks')
        positions = []
    else:
        positions = _cross_positions(num_self, num_cross)
    head = text.get('text.text_projection')
    vocab = head.shape[1] if head is not None else None
    for key, value in text.items():
        dec = 'text_decoder.'
        self_match, cross_match = _SELF_BLOCK.match(key), _CROSS_BLOCK.match(key)
        if self_match is not None:
            index, suffix = int(self_match.group(1)), self_match.group(2)
            if suffix in _SELF:
                out[f'{dec}blocks.{index}.{_SELF[suffix]}'] = value
                continue
        elif cross_match is not None and positions:
            index, suffix = positions[int(cross_match.group(1))], cross_match.group(2)
            prefix = f'{dec}blocks.{index}.'
            if suffix in _CROSS:
                out[prefix + _CROSS[suffix]] = value
                continue
            if suffix in ('attn.in_proj_weight', 'attn.in_proj_bias'):
                width = value.shape[0] // 3
                kind = 'weight' if suffix.endswith('weight') else 'bias'
                out[f'{prefix}cross_attn.q.{kind}'] = value[:width]
                out[f'{prefix}cross_attn.kv.{kind}'] = value[width:]
                continue
        elif key == 'text.token_embedding.weight':
            if vocab is not None and value.shape[0] > vocab:
                unused[f'{key}[{vocab}:]'] = f'rows past the captioning vocabulary of {vocab} (never indexed)'
                value = value[:vocab]
            out[f'{dec}token_embed.weight'] = value
            continue
        elif key == 'text.positional_embedding':
            out[f'{dec}pos_embed'] = value.unsqueeze(0)
            continue
        elif key.startswith('text.ln_final.'):
            out[f'{dec}norm_final.{key.split(".")[-1]}'] = value
            continue
        elif key == 'text.text_projection':
            out[f'{dec}lm_head.weight'] = value.t().contiguous()
            continue
        elif key == 'text.attn_mask':
            unused[key] = 'causal-mask buffer: the decoder builds its masks itself'
            continue
        problems.append(f'{key}: no counterpart in our MaMMUT')
    for key, value in state.items():
        if key.startswith(('visual.', 'text.')):
            continue
        if key == 'map_viz2txt_kv':
            out['img_ctx_proj.weight'] = value.t().contiguous()
        elif key in ('logit_scale', 'logit_bias'):
            if value.numel() != 1:
                problems.append(f'{key}: shape {tuple(value.shape)}, expected a scalar')
            out[key] = value.reshape(())
        else:
            problems.append(f'{key}: no counterpart in our MaMMUT')
    for needed in ('map_viz2txt_kv', 'logit_scale', 'text.text_projection', 'text.token_embedding.weight'):
        if needed not in state:
            problems.append(f'{needed} missing: not an openMaMMUT checkpoint')
    if problems:
        raise OpenMaMMUTConversionError(problems)
    return out, unused
