"""Released BEiT-3 checkpoints (microsoft/unilm ``beit3/``) -> our :class:`~pretrain.models.beit3.BEiT3`.

The unilm models wrap torchscale's ``BEiT3`` as ``self.beit3`` (``modeling_utils.BEiT3Wrapper``);
``BEiT3ForRetrieval`` (``modeling_finetune.py``) adds ``vision_head`` and ``language_head`` (bias-free D -> D)
and ``logit_scale``. Its image embedding is ``normalize(vision_head(encoder_out[:, 0]))`` of an image-only
pass, its text embedding ``normalize(language_head(encoder_out[:, 0]))`` of a text-only pass, exactly
:meth:`BEiT3.image_embedding` / :meth:`BEiT3.text_embedding` of a model whose backbone is a
:class:`~pretrain.models.multiway.MultiwayTransformer` with ``attention='multiway'`` and ``num_vl_layers=0``.

Key map (:func:`convert_unilm_beit3`):

* ``beit3.*`` -> ``backbone.*`` through :func:`~pretrain.models.multiway.torchscale_beit3_name` (torchscale's
  ``A`` / ``B`` multiway copies become ``vision`` / ``language``);
* ``vision_head.weight`` -> ``img_proj.weight``, ``language_head.weight`` -> ``txt_proj.weight``,
  ``logit_scale`` -> ``logit_scale`` (the same log-scale parameter; we clamp ``exp`` at 100, unilm does not).

The pretrained checkpoints (``beit3_base_patch16_224``, ``beit3_*_itc_patch16_224``) hold the ``beit3.*``
tensors only (plus the heads for the ITC ones); the converted file then fits a retrieval model's backbone.
Task heads of other unilm models (VQA, NLVR2, captioning, classification) are not mapped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from .multiway import MultiwayTransformer, torchscale_beit3_name

__all__ = ['convert_unilm_beit3', 'unilm_beit3_backbone_kwargs']

_HEADS = {
    'vision_head.weight': 'img_proj.weight',
    'language_head.weight': 'txt_proj.weight',
    'logit_scale': 'logit_scale',
}


def unilm_beit3_backbone_kwargs(state_dict: Mapping[str, Tensor], *, num_heads: int = 1) -> dict:
    """``MultiwayTransformer`` keyword arguments that fit the ``beit3.*`` tensors of a unilm checkpoint.

    ``num_heads`` is not stored in a checkpoint (base 12, large 16); shapes do not depend on it.

    Raises:
        ValueError: the tensors that give the sizes are missing or the position table is not square.
    """
    try:
        text = state_dict['beit3.text_embed.weight']
        patch = state_dict['beit3.vision_embed.proj.weight']
        pos_vision = state_dict['beit3.encoder.embed_positions.A.weight']
        pos_text = state_dict['beit3.encoder.embed_positions.B.weight']
        fc1 = state_dict['beit3.encoder.layers.0.ffn.A.fc1.weight']
    except KeyError as err:
        raise ValueError(f'not a unilm BEiT-3 checkpoint: {err.args[0]!r} is missing') from None
    grid = round((pos_vision.shape[0] - 3) ** 0.5)  # cls + patches, positions from 2
    if grid * grid + 3 != pos_vision.shape[0]:
        raise ValueError(f'vision position table of {pos_vision.shape[0]} rows is not 3 + a square grid')
    layers = {
        int(m.group(1)) for m in map(re.compile(r'^beit3\.encoder\.layers\.(\d+)\.').match, state_dict) if m
    }
    return dict(
        vocab_size=text.shape[0],
        img_size=grid * patch.shape[-1],
        patch_size=patch.shape[-1],
        in_chans=patch.shape[1],
        embed_dim=text.shape[1],
        depth=max(layers) + 1,
        num_heads=num_heads,
        ffn_dim=fc1.shape[0],
        num_vl_layers=0,  # torchscale has no vision-language experts
        max_text_len=pos_text.shape[0] - 2,
        attention='multiway',
    )


def _target_shapes(state_dict: Mapping[str, Tensor], with_heads: bool) -> dict[str, tuple[int, ...]]:
    with torch.device('meta'):
        backbone = MultiwayTransformer(**unilm_beit3_backbone_kwargs(state_dict))
    shapes = {f'backbone.{k}': tuple(v.shape) for k, v in backbone.state_dict().items()}
    if with_heads:
        width = backbone.embed_dim
        shapes.update(
            {'img_proj.weight': (width, width), 'txt_proj.weight': (width, width), 'logit_scale': ()}
        )
    return shapes


def convert_unilm_beit3(
    state_dict: Mapping[str, Tensor], *, strict: bool = True
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A unilm BEiT-3 state dict (the ``model`` entry of a released ``.pth``) -> our ``BEiT3`` tensors.

    Every converted tensor is checked against the shapes of a model sized from the checkpoint itself
    (:func:`unilm_beit3_backbone_kwargs`; heads D -> D).

    Args:
        state_dict: the tensors (``beit3.*``, optionally ``vision_head``/``language_head``/``logit_scale``).
        strict: raise on source tensors we cannot map and on target tensors left without a source (a
            partial checkpoint); with ``False`` they are returned in ``skipped`` instead.

    Returns:
        ``(tensors, skipped)``: our state dict (``backbone.*``, ``img_proj``, ``txt_proj``, ``logit_scale``)
        and, for each source key not converted, the reason.

    Raises:
        ValueError: naming every key that cannot be mapped and every shape that does not fit (shape
            mismatches raise even when not strict).
    """
    out: dict[str, Tensor] = {}
    skipped: dict[str, str] = {}
    for key, value in state_dict.items():
        name = _HEADS.get(key)
        if name is None and key.startswith('beit3.'):
            name = torchscale_beit3_name(key)
            if name == '':
                skipped[key] = 'torchscale output projection, unused by BEiT-3'
                continue
            if name is not None:
                name = f'backbone.{name}'
        if name is None:
            skipped[key] = 'no counterpart in BEiT3 (a task head of another unilm model?)'
        else:
            out[name] = value
    with_heads = any(not key.startswith('backbone.') for key in out)
    shapes = _target_shapes(state_dict, with_heads)
    errors = [
        f'{key}: converted {tuple(value.shape)}, model {shapes[key]}'
        for key, value in out.items()
        if key in shapes and tuple(value.shape) != shapes[key]
    ]
    errors += [f'{key}: no such tensor in the model' for key in out if key not in shapes]
    missing = sorted(set(shapes) - set(out))
    unmapped = sorted(key for key, why in skipped.items() if not why.startswith('torchscale output'))
    if strict:
        errors += [f'{key}: cannot be mapped' for key in unmapped]
        errors += [f'{key}: not in the checkpoint' for key in missing]
    if errors:
        raise ValueError('cannot convert the unilm BEiT-3 checkpoint:\n  ' + '\n  '.join(errors))
    for key in missing:
        skipped[key] = 'model tensor not in the checkpoint: left at its initialisation'
    return out, skipped
