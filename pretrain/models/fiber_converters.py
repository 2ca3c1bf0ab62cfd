"""State-dict converters into :class:`~pretrain.models.fiber_backbone.FIBERBackbone` (tensor layouts only).

* :func:`convert_timm_swin`: a timm ``SwinTransformer`` state dict -> mmdet Swin keys (``image.`` prefixed,
  as inside ``FIBERBackbone``; ``prefix=''`` for a bare mmdet ``SwinTransformer``). timm >= 0.9 puts
  ``downsample`` at the start of the next stage and keeps the final ``norm`` for the last stage; the official
  Microsoft layout (and timm < 0.9) has it at the end of the stage. Both are read. The relative-position index
  and the shift masks are buffers that mmdet rebuilds.
* :func:`convert_hf_roberta`: a ``transformers`` RoBERTa state dict (bare ``RobertaModel`` or ``roberta.``
  prefixed, e.g. ``RobertaForMaskedLM``) -> ``text.`` keys.
* :func:`convert_fiber_checkpoint`: the official FIBER checkpoints (microsoft/FIBER) -> ``FIBERBackbone``:
  fine-grained (maskrcnn_benchmark ``GeneralizedVLRCNN``: ``fusion_backbone.backbone.body.*`` Swin and
  ``fusion_backbone.language_backbone.body.model.*`` RoBERTa) and coarse-grained (``FIBERTransformerSS``:
  ``vit_model.*`` and ``text_transformer.*``), with or without DDP's ``module.`` prefix. Their fusion modules
  (Swin ``attn.{qkv_i2t, qkv_text_i2t, proj_i2t, alpha_i2t, norm_i2t_i}``, RoBERTa ``crossattention_t2i.*``
  and ``alpha_t2i``) map onto ``image_cross_attn.k`` / ``text_cross_attn.k`` by pairing order; the text
  side's separate ``key``/``value`` are concatenated into ``kv_proj``. Shapes are checked against the model.
* :func:`convert_fiber_state_dict`: the same without a model (``tools/model_converters/fiber_to_toolkit.py``):
  the pairing is read from the checkpoint (the Swin blocks with ``attn.qkv_i2t`` and the RoBERTa layers with
  ``crossattention_t2i``); keys outside the backbones are named in ``unused``, FIBER's known heads as such
  (:data:`FIBER_HEAD_PREFIXES`), anything else as unrecognised.

Every converter returns ``(tensors, unused)``: ``unused`` names each input key that was not mapped and why.
Patch merging: official/timm concatenate the 2x2 neighbours as (0,0), (1,0), (0,1), (1,1) (row, column);
mmdet's ``nn.Unfold`` is channel-major with (0,0), (0,1), (1,0), (1,1), so the reduction's input columns and
the norm's entries are reordered (as mmdet's own ``swin_converter``). Files are read with
:func:`toolkit.checkpoint.load_state_dict_file` (``weights_only``) and converted tensors loaded with
:func:`toolkit.checkpoint.load_converted`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from einops import rearrange
from torch import Tensor

from toolkit.checkpoint import load_converted, load_state_dict_file, state_dict_mismatch, strip_prefix

if TYPE_CHECKING:
    from .fiber_backbone import FIBERBackbone

__all__ = [
    'FIBER_HEAD_PREFIXES',
    'UNRECOGNISED',
    'convert_fiber_checkpoint',
    'convert_fiber_state_dict',
    'convert_hf_roberta',
    'convert_timm_swin',
    'load_fiber_checkpoint',
]

_BLOCK_KEY = re.compile(r'^layers\.(\d+)\.blocks\.(\d+)\.(.+)$')
_DOWNSAMPLE_KEY = re.compile(r'^layers\.(\d+)\.downsample\.(norm|reduction)\.(weight|bias)$')
_OUT_NORM_KEY = re.compile(r'^norm(\d+)\.(weight|bias)$')
_TEXT_LAYER_KEY = re.compile(r'^encoder\.layer\.(\d+)\.(.+)$')
_MERGE_ORDER = [0, 2, 1, 3]  # official (0,0),(1,0),(0,1),(1,1) -> unfold (0,0),(0,1),(1,0),(1,1)

_SWIN_BLOCK = {
    'norm1.weight': 'norm1.weight',
    'norm1.bias': 'norm1.bias',
    'norm2.weight': 'norm2.weight',
    'norm2.bias': 'norm2.bias',
    'attn.qkv.weight': 'attn.w_msa.qkv.weight',
    'attn.qkv.bias': 'attn.w_msa.qkv.bias',
    'attn.proj.weight': 'attn.w_msa.proj.weight',
    'attn.proj.bias': 'attn.w_msa.proj.bias',
    'attn.relative_position_bias_table': 'attn.w_msa.relative_position_bias_table',
    'mlp.fc1.weight': 'ffn.layers.0.0.weight',
    'mlp.fc1.bias': 'ffn.layers.0.0.bias',
    'mlp.fc2.weight': 'ffn.layers.1.weight',
    'mlp.fc2.bias': 'ffn.layers.1.bias',
}
_SWIN_BUFFERS = ('attn.relative_position_index', 'attn_mask')
_FIBER_IMAGE_FUSION = {
    'attn.qkv_i2t.weight': 'q_proj.weight',
    'attn.qkv_i2t.bias': 'q_proj.bias',
    'attn.qkv_text_i2t.weight': 'kv_proj.weight',
    'attn.qkv_text_i2t.bias': 'kv_proj.bias',
    'attn.proj_i2t.weight': 'out_proj.weight',
    'attn.proj_i2t.bias': 'out_proj.bias',
    'attn.alpha_i2t': 'alpha',
    'attn.norm_i2t_i.weight': 'norm.weight',
    'attn.norm_i2t_i.bias': 'norm.bias',
}
_FIBER_TEXT_FUSION = {
    'crossattention_t2i.self.query.weight': 'q_proj.weight',
    'crossattention_t2i.self.query.bias': 'q_proj.bias',
    'crossattention_t2i.output.dense.weight': 'out_proj.weight',
    'crossattention_t2i.output.dense.bias': 'out_proj.bias',
    'alpha_t2i': 'alpha',
}
# Heads and training state of FIBERTransformerSS (coarse) and GeneralizedVLRCNN (fine), not backbone weights.
FIBER_HEAD_PREFIXES = (
    'cross_modal_',
    'itm_score.',
    'rank_output.',
    'mlm_score.',
    'vqa_classifier.',
    'nlvr2_classifier.',
    'snli_classifier.',
    'temp',
    'image_queue',
    'text_queue',
    'image_input_queue',
    'text_input_queue',
    'text_input_mask_queue',
    'queue_ptr',
    'queue_total',
    'fusion_backbone.backbone.fpn.',
    'rpn.',
    'roi_heads.',
)
UNRECOGNISED = 'unrecognised: neither a FIBER backbone tensor nor a known FIBER head'
_FIBER_FLAVOURS = {
    'fine-grained': ('fusion_backbone.backbone.body.', 'fusion_backbone.language_backbone.body.model.'),
    'coarse-grained': ('vit_model.', 'text_transformer.'),
}


def _unfold_reduction(weight: Tensor) -> Tensor:
    """Patch-merging ``reduction.weight`` (out, 4C) from the concatenation order to mmdet's unfold order."""
    return rearrange(rearrange(weight, 'o (k c) -> o k c', k=4)[:, _MERGE_ORDER], 'o k c -> o (c k)')


def _unfold_norm(value: Tensor) -> Tensor:
    """Patch-merging ``norm.{weight,bias}`` (4C,) from the concatenation order to mmdet's unfold order."""
    return rearrange(rearrange(value, '(k c) -> k c', k=4)[_MERGE_ORDER], 'k c -> (c k)')


def _map_swin(
    swin: Mapping[str, Tensor],
    *,
    source_prefix: str,
    prefix: str,
    downsample_at_start: bool,
    fused_index: Mapping[tuple[int, int], int] | None,
    target: Mapping[str, Tensor] | None,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Official-named Swin tensors (``layers.s.blocks.b.*``) -> mmdet keys (plus FIBER's image fusion)."""
    out: dict[str, Tensor] = {}
    unused: dict[str, str] = {}
    stage_ids = {int(m.group(1)) for m in map(_BLOCK_KEY.match, swin) if m is not None}
    last_stage = max(stage_ids) if stage_ids else 0
    for key, value in swin.items():
        source = source_prefix + key
        block = _BLOCK_KEY.match(key)
        down = _DOWNSAMPLE_KEY.match(key)
        out_norm = _OUT_NORM_KEY.match(key)
        if block is not None:
            s, b, suffix = int(block.group(1)), int(block.group(2)), block.group(3)
            if suffix in _SWIN_BLOCK:
                out[f'{prefix}stages.{s}.blocks.{b}.{_SWIN_BLOCK[suffix]}'] = value
            elif suffix in _SWIN_BUFFERS:
                unused[source] = 'buffer that mmdet rebuilds (relative-position index / shift mask)'
            elif suffix in _FIBER_IMAGE_FUSION:
                if fused_index is None:
                    raise ValueError(f'{source}: FIBER fusion tensor in a plain Swin state dict')
                if (s, b) not in fused_index:
                    raise ValueError(
                        f'{source}: the checkpoint fuses Swin block (stage {s}, block {b}) but the model '
                        f'fuses only {sorted(fused_index)}; set fusion_layers to match'
                    )
                out[f'image_cross_attn.{fused_index[(s, b)]}.{_FIBER_IMAGE_FUSION[suffix]}'] = value
            else:
                raise ValueError(f'{source}: unknown Swin block tensor {suffix!r}')
        elif down is not None:
            s = int(down.group(1)) - (1 if downsample_at_start else 0)
            kind, param = down.group(2), down.group(3)
            fixed = _unfold_reduction(value) if kind == 'reduction' else _unfold_norm(value)
            out[f'{prefix}stages.{s}.downsample.{kind}.{param}'] = fixed
        elif key.startswith('patch_embed.proj.'):
            out[f'{prefix}patch_embed.projection.{key[len("patch_embed.proj.") :]}'] = value
        elif key.startswith('patch_embed.norm.'):
            out[prefix + key] = value
        elif out_norm is not None or key.startswith('norm.'):
            # ``norm{i}`` (detection Swin, per output stage) or ``norm`` (classification Swin, last stage).
            name = prefix + key if out_norm is not None else f'{prefix}norm{last_stage}.{key[len("norm.") :]}'
            if target is not None and name not in target:
                unused[source] = f'{name} does not exist: that stage is not in the Swin out_indices'
            else:
                out[name] = value
        elif key.startswith('head.'):
            unused[source] = 'classification head'
        elif key == 'absolute_pos_embed':
            unused[source] = 'absolute position embedding (ape): not used by FIBER, not mapped'
        else:
            raise ValueError(f'{source}: unknown Swin tensor')
    return out, unused


def _map_roberta(
    text: Mapping[str, Tensor],
    *,
    source_prefix: str,
    fused_layers: Mapping[int, int] | None,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """RoBERTa encoder tensors (``embeddings.*``, ``encoder.layer.i.*``) -> ``text.*``, plus FIBER's text-side
    fusion (``crossattention_t2i``, ``alpha_t2i``) -> ``text_cross_attn.k``."""
    out: dict[str, Tensor] = {}
    unused: dict[str, str] = {}
    key_value: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in text.items():
        source = source_prefix + key
        layer = _TEXT_LAYER_KEY.match(key)
        if key in ('embeddings.position_ids', 'embeddings.token_type_ids'):
            unused[source] = 'buffer that RobertaEmbeddings rebuilds'
        elif key.startswith('embeddings.'):
            out['text.' + key] = value
        elif key.startswith('pooler.'):
            unused[source] = 'RoBERTa pooler: FIBERBackbone has none (heads pool themselves)'
        elif layer is not None:
            index, suffix = int(layer.group(1)), layer.group(2)
            fused = fused_layers is not None and index in fused_layers
            if suffix.split('.')[0] in ('attention', 'intermediate', 'output'):
                out[f'text.encoder.layer.{index}.{suffix}'] = value
            elif suffix == 'alpha_t2i' and not fused:
                unused[source] = (
                    'gate of a layer without cross-attention (coarse-grained FIBER makes one per layer)'
                )
            elif suffix.startswith('crossattention_t2i.output.LayerNorm.'):
                unused[source] = "LayerNorm that FIBER's cross-attention never applies"
            elif suffix.startswith('crossattention_t2i.') or suffix == 'alpha_t2i':
                if fused_layers is None or not fused:
                    raise ValueError(
                        f'{source}: the checkpoint fuses RoBERTa layer {index} but the model fuses only '
                        f'{sorted(fused_layers or {})}; set fusion_layers to match'
                    )
                k = fused_layers[index]
                if suffix in _FIBER_TEXT_FUSION:
                    out[f'text_cross_attn.{k}.{_FIBER_TEXT_FUSION[suffix]}'] = value
                elif re.fullmatch(r'crossattention_t2i\.self\.(key|value)\.(weight|bias)', suffix):
                    _, _, role, param = suffix.split('.')
                    key_value.setdefault((k, param), {})[role] = value
                else:
                    raise ValueError(f'{source}: unknown FIBER text cross-attention tensor')
            elif suffix.startswith('crossattention.'):
                unused[source] = 'Hugging Face decoder cross-attention: not part of the FIBER encoder'
            else:
                raise ValueError(f'{source}: unknown RoBERTa layer tensor')
        else:
            raise ValueError(f'{source}: unknown RoBERTa tensor')
    for (k, param), parts in key_value.items():
        if set(parts) != {'key', 'value'}:
            raise ValueError(
                f'text cross-attention {k}: crossattention_t2i.self key/value {param} incomplete'
            )
        out[f'text_cross_attn.{k}.kv_proj.{param}'] = torch.cat([parts['key'], parts['value']], dim=0)
    return out, unused


def _check_shapes(tensors: Mapping[str, Tensor], target: Mapping[str, Tensor], what: str) -> None:
    """``ValueError`` naming every tensor the model lacks and every shape that does not fit."""
    mismatch = state_dict_mismatch(tensors, target)
    problems = [f'{key}: no counterpart in the model' for key in mismatch['unexpected']] + mismatch['shape']
    if problems:
        raise ValueError(f'{what}: {len(problems)} tensors do not fit:\n  ' + '\n  '.join(problems))


def convert_timm_swin(
    state_dict: Mapping[str, Tensor], *, prefix: str = 'image.'
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """timm ``SwinTransformer`` (>= 0.9, or the official/old layout) -> mmdet Swin keys under ``prefix``.

    timm's final ``norm`` becomes ``norm{last stage}`` (the last output's norm; the other output norms have no
    timm counterpart and keep their initialisation). Raises ``ValueError`` on tensors it cannot place.
    """
    swin = strip_prefix(state_dict, 'module.', nested=True)
    if not any(_BLOCK_KEY.match(key) for key in swin):
        raise ValueError('not a Swin state dict: no layers.<stage>.blocks.<block>.* tensors')
    official_layout = any(key.startswith('layers.0.downsample.') for key in swin)
    return _map_swin(
        swin,
        source_prefix='',
        prefix=prefix,
        downsample_at_start=not official_layout,
        fused_index=None,
        target=None,
    )


def convert_hf_roberta(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``transformers`` RoBERTa (bare, or ``roberta.`` prefixed as ``RobertaForMaskedLM``) -> ``text.*``."""
    text = strip_prefix(state_dict, 'module.', nested=True)
    unused: dict[str, str] = {}
    if any(key.startswith('roberta.') for key in text):
        for key in text:
            if not key.startswith('roberta.'):
                head = 'masked-LM head' if key.startswith('lm_head.') else 'a task head'
                unused[key] = f'{head}, not part of the RoBERTa encoder'
        text = {key[len('roberta.') :]: value for key, value in text.items() if key.startswith('roberta.')}
        source_prefix = 'roberta.'
    else:
        source_prefix = ''
    if 'embeddings.word_embeddings.weight' not in text:
        raise ValueError('not a RoBERTa state dict: embeddings.word_embeddings.weight missing')
    out, more_unused = _map_roberta(text, source_prefix=source_prefix, fused_layers=None)
    unused.update(more_unused)
    return out, unused


def _fiber_flavour(flat: Mapping[str, Tensor]) -> tuple[str, str, str]:
    found = [
        (name, image_prefix, text_prefix)
        for name, (image_prefix, text_prefix) in _FIBER_FLAVOURS.items()
        if any(key.startswith(image_prefix) for key in flat)
    ]
    if len(found) != 1:
        raise ValueError(
            'not a FIBER checkpoint: expected the tensors of exactly one of '
            f'{[prefixes[0] for prefixes in _FIBER_FLAVOURS.values()]}, '
            f'found {[name for name, _, _ in found]}'
        )
    return found[0]


def convert_fiber_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """An official FIBER state dict -> ``FIBERBackbone`` keys, without a model.

    The fused Swin blocks (those with ``attn.qkv_i2t``) and RoBERTa layers (with ``crossattention_t2i``) are
    paired in order, as ``FIBERBackbone`` pairs its last K blocks and layers. Returns ``(tensors, unused)``;
    ``unused`` gives each key left out and why (:data:`UNRECOGNISED` for keys that are neither backbone
    tensors nor FIBER's known heads). Raises ``ValueError`` on unknown backbone tensors or when the two sides
    fuse different numbers of blocks/layers.
    """
    flat = strip_prefix(state_dict, 'module.', nested=True)
    flavour, image_prefix, text_prefix = _fiber_flavour(flat)
    image = {key[len(image_prefix) :]: v for key, v in flat.items() if key.startswith(image_prefix)}
    text = {key[len(text_prefix) :]: v for key, v in flat.items() if key.startswith(text_prefix)}
    fused_blocks = sorted(
        (int(m.group(1)), int(m.group(2)))
        for m in map(_BLOCK_KEY.match, image)
        if m is not None and m.group(3) == 'attn.qkv_i2t.weight'
    )
    fused_text = sorted(
        int(m.group(1))
        for m in map(_TEXT_LAYER_KEY.match, text)
        if m is not None and m.group(2) == 'crossattention_t2i.self.query.weight'
    )
    if len(fused_blocks) != len(fused_text):
        raise ValueError(
            f'{flavour} FIBER checkpoint fuses {len(fused_blocks)} Swin blocks {fused_blocks} but '
            f'{len(fused_text)} RoBERTa layers {fused_text}: FIBERBackbone pairs them one to one'
        )
    num_text = 1 + max(
        (int(m.group(1)) for m in map(_TEXT_LAYER_KEY.match, text) if m is not None), default=-1
    )
    if fused_text != list(range(num_text - len(fused_text), num_text)):
        raise ValueError(f'{flavour} FIBER checkpoint fuses RoBERTa layers {fused_text}, not the last ones')
    unused = {
        key: (
            f'head or training state of the {flavour} FIBER model, not part of the backbones'
            if key.startswith(FIBER_HEAD_PREFIXES)
            else UNRECOGNISED
        )
        for key in flat
        if not key.startswith((image_prefix, text_prefix))
    }
    out, image_unused = _map_swin(
        image,
        source_prefix=image_prefix,
        prefix='image.',
        downsample_at_start=False,
        fused_index={block: k for k, block in enumerate(fused_blocks)},
        target=None,
    )
    text_out, text_unused = _map_roberta(
        text, source_prefix=text_prefix, fused_layers={index: k for k, index in enumerate(fused_text)}
    )
    out.update(text_out)
    unused.update(image_unused)
    unused.update(text_unused)
    return out, unused


def convert_fiber_checkpoint(
    state_dict: Mapping[str, Tensor], backbone: FIBERBackbone
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """An official FIBER state dict (fine- or coarse-grained) -> ``backbone``'s (a ``FIBERBackbone``).

    Returns ``(tensors, unused)``; load with :func:`~toolkit.checkpoint.load_converted`. Heads, FPN, queues
    and the like are returned in ``unused``. Raises ``ValueError`` when the checkpoint fuses other
    blocks/layers than ``backbone`` (``fusion_layers``), or on shape mismatches (``image_query_norm``, widths,
    depths).
    """
    flat = strip_prefix(state_dict, 'module.', nested=True)
    flavour, image_prefix, text_prefix = _fiber_flavour(flat)
    target = backbone.state_dict()
    fused_index = {block: k for k, block in enumerate(backbone.fused_image_blocks)}
    fused_layers = {index: k for k, index in enumerate(backbone.fused_text_layers)}
    image = {key[len(image_prefix) :]: v for key, v in flat.items() if key.startswith(image_prefix)}
    text = {key[len(text_prefix) :]: v for key, v in flat.items() if key.startswith(text_prefix)}
    unused = {
        key: f'not part of the {flavour} FIBER backbones (heads, FPN, queues)'
        for key in flat
        if not key.startswith((image_prefix, text_prefix))
    }
    out, image_unused = _map_swin(
        image,
        source_prefix=image_prefix,
        prefix='image.',
        downsample_at_start=False,  # FIBER's Swin merges patches at the end of a stage (official layout)
        fused_index=fused_index,
        target=target,
    )
    text_out, text_unused = _map_roberta(text, source_prefix=text_prefix, fused_layers=fused_layers)
    out.update(text_out)
    unused.update(image_unused)
    unused.update(text_unused)
    _check_shapes(out, target, f'{flavour} FIBER checkpoint')
    return out, unused


def load_fiber_checkpoint(
    backbone: FIBERBackbone, path: str | os.PathLike[str]
) -> tuple[list[str], dict[str, str]]:
    """Read an official FIBER checkpoint file into ``backbone``: returns (keys left at init, unused keys)."""
    state_dict = load_state_dict_file(path, wrappers=('state_dict', 'model', 'module'))
    tensors, unused = convert_fiber_checkpoint(state_dict, backbone)
    return load_converted(backbone, tensors), unused
