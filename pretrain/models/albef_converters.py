"""Official ALBEF checkpoints (salesforce/ALBEF) -> :class:`~pretrain.models.albef.ALBEF` (layouts only).

Both official classes are read: ``models/model_pretrain.py`` (``ALBEF.pth``, ``ALBEF_4M.pth``: the text stack
is a ``BertForMaskedLM``, keys ``text_encoder.bert.*`` and the MLM head ``text_encoder.cls.*``) and
``models/model_retrieval.py`` (``mscoco.pth``, ``flickr30k.pth``: a ``BertModel``, keys ``text_encoder.*``,
no MLM head, plus ``idx_queue``). A released file holds ``{'model': state_dict, ...}``.

Mapping (our model keeps the momentum model and the queues, so nothing is dropped silently):

* ``visual_encoder.*`` (timm ViT): ``patch_embed.proj`` -> ``patch_embed``; ``pos_embed`` (1, 1 + N, D) is
  split into ``cls_pos_embed`` (the class token's row) and ``pos_embed``; blocks and ``norm`` keep their
  names. ``target_grid`` resizes the patch rows bicubically, as ALBEF's ``interpolate_pos_embed`` does when
  ``Retrieval.py`` loads a 256-pixel pretrained checkpoint at 384.
* ``text_encoder[.bert].*`` -> ``text_encoder.*`` through :func:`~pretrain.models.bert.convert_hf_bert`;
  the ``embeddings.position_ids`` buffer is dropped (ours computes positions).
* ``text_encoder.cls.predictions.*`` -> ``mlm_head.*`` (``transform.dense`` -> ``dense``,
  ``transform.LayerNorm`` -> ``norm``, ``decoder.weight``, ``bias`` -> ``decoder.bias``; ``decoder.bias``
  is the same tied tensor and is checked equal, then dropped). ``decoder.weight`` is tied to the word
  embeddings in ALBEF; ours keeps an untied copy of equal value. ``drop_mlm_head=True`` leaves the head out
  (for a model with ``with_mlm=False``, as the official retrieval class, which ignores the head when
  fine-tuning from a pretrained file).
* ``vision_proj``, ``text_proj``, ``itm_head``, ``temp``: same names.
* Momentum copies ``visual_encoder_m``, ``vision_proj_m``, ``text_encoder_m``, ``text_proj_m`` ->
  ``momentum_model.{visual_encoder, vision_proj, text_encoder, text_proj, mlm_head}`` with the same maps.
* Queues: ``image_queue`` / ``text_queue`` (E, Q) -> ``image_queue.feats`` / ``text_queue.feats`` (Q, E);
  ``idx_queue`` (1, Q) -> both queues' ``ids`` (without it, in pretraining files, -1: never an image id, as
  the official pretraining treats every queue entry as a negative); ``queue_ptr`` -> both ``ptr``;
  ``count`` = Q (the official queue starts full of random features and uses every entry).
  ``drop_queues=True`` leaves them out.
* ``num_updates`` (our step counter, which ramps ``alpha``) is written as 0: training from the file starts
  fresh.

:func:`convert_albef_checkpoint` returns ``(tensors, unused)``; ``unused`` names every input key not
converted and why. Keys it does not know raise (``strict``, every one named) or are listed in ``unused``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from toolkit.checkpoint import strip_prefix

from .bert import convert_hf_bert

__all__ = ['convert_albef_checkpoint', 'convert_albef_vit', 'unwrap_albef_checkpoint']

_VIT_BLOCK = re.compile(r'^blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$')
_MLM_HEAD = {
    'predictions.transform.dense.weight': 'dense.weight',
    'predictions.transform.dense.bias': 'dense.bias',
    'predictions.transform.LayerNorm.weight': 'norm.weight',
    'predictions.transform.LayerNorm.bias': 'norm.bias',
    'predictions.decoder.weight': 'decoder.weight',
    'predictions.bias': 'decoder.bias',
}
_SAME = ('vision_proj', 'text_proj', 'itm_head')


def unwrap_albef_checkpoint(obj: Mapping) -> dict[str, Tensor]:
    """The state dict of a released file (``{'model': ...}``) or of a bare one, without DDP's ``module.``."""
    state = obj.get('model', obj) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping):
        raise ValueError(f'not an ALBEF checkpoint: {type(state).__name__}')
    return strip_prefix(dict(state), 'module.')


def _resize_pos(patch_pos: Tensor, target_grid: int) -> Tensor:
    """(1, N, D) square-grid embeddings -> (1, target_grid ** 2, D), bicubic as ``interpolate_pos_embed``."""
    side = int(round(patch_pos.shape[1] ** 0.5))
    if side * side != patch_pos.shape[1]:
        raise ValueError(f'pos_embed has {patch_pos.shape[1]} patch rows: not a square grid')
    if side == target_grid:
        return patch_pos
    grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(target_grid, target_grid), mode='bicubic', align_corners=False)
    return grid.permute(0, 2, 3, 1).flatten(1, 2)


def convert_albef_vit(
    state_dict: Mapping[str, Tensor], *, target_grid: int | None = None
) -> tuple[dict[str, Tensor], list[str]]:
    """ALBEF's timm ``VisionTransformer`` keys (no prefix) -> ``MaMMUTViT(class_token=True)`` keys.

    Returns ``(tensors, unknown keys)``."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if _VIT_BLOCK.match(key) or key in ('cls_token', 'norm.weight', 'norm.bias'):
            out[key] = value
        elif key in ('patch_embed.proj.weight', 'patch_embed.proj.bias'):
            out['patch_embed.' + key.rsplit('.', 1)[1]] = value
        elif key == 'pos_embed':
            out['cls_pos_embed'] = value[:, :1].contiguous()
            patch_pos = value[:, 1:]
            out['pos_embed'] = (
                patch_pos if target_grid is None else _resize_pos(patch_pos, target_grid)
            ).contiguous()
        else:
            unknown.append(key)
    return out, unknown


def _convert_text(
    text: Mapping[str, Tensor], prefix: str, *, drop_mlm_head: bool, unused: dict[str, str]
) -> tuple[dict[str, Tensor], dict[str, Tensor], list[str]]:
    """``text_encoder[_m].*`` without the prefix -> (BERT tensors, MLM-head tensors, unknown keys)."""
    bert_prefix = 'bert.' if any(k.startswith('bert.') for k in text) else ''  # pretraining: BertForMaskedLM
    bert_part = {
        k[len(bert_prefix) :]: v
        for k, v in text.items()
        if k.startswith(bert_prefix) and not k.startswith('cls.')
    }
    head_part = {k[len('cls.') :]: v for k, v in text.items() if k.startswith('cls.')}
    bert, leftover = convert_hf_bert(bert_part)
    unknown = [f'{prefix}{k}' for k in text if not k.startswith((bert_prefix, 'cls.'))]
    for key in leftover:
        if key == 'embeddings.position_ids':
            unused[f'{prefix}{bert_prefix}{key}'] = 'position-id buffer'
        else:
            unknown.append(f'{prefix}{bert_prefix}{key}')
    head: dict[str, Tensor] = {}
    for key, value in head_part.items():
        name = f'{prefix}cls.{key}'
        if drop_mlm_head:
            unused[name] = 'MLM head dropped (drop_mlm_head: a model without MLM)'
        elif key in _MLM_HEAD:
            head[_MLM_HEAD[key]] = value
        elif key == 'predictions.decoder.bias':
            tied = head_part.get('predictions.bias')
            if tied is None or not torch.equal(tied, value):
                unknown.append(name + ' (differs from predictions.bias it is tied to)')
            else:
                unused[name] = 'tied to predictions.bias (converted once)'
        else:
            unknown.append(name)
    return bert, head, unknown


def convert_albef_checkpoint(
    state_dict: Mapping[str, Tensor],
    *,
    strict: bool = True,
    drop_mlm_head: bool = False,
    drop_queues: bool = False,
    target_grid: int | None = None,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Official ALBEF state dict (pretraining or retrieval class) -> :class:`ALBEF` keys.

    Args:
        state_dict: the ``model`` dict of a released file (see :func:`unwrap_albef_checkpoint`).
        strict: raise on keys that cannot be mapped (every one named); otherwise list them in ``unused``.
        drop_mlm_head: leave ``text_encoder[_m].cls.*`` out (for ``ALBEF(with_mlm=False)``).
        drop_queues: leave the queues out (for a model with another ``queue_size``).
        target_grid: patch-grid side of the target image encoder; position embeddings are resized to it.

    Returns:
        ``(tensors, unused)``: ``unused`` maps each input key left out to the reason.
    """
    out: dict[str, Tensor] = {}
    unused: dict[str, str] = {}
    unknown: list[str] = []
    groups: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition('.')
        groups.setdefault(head, {})[rest] = value
    for suffix, dest in (('', ''), ('_m', 'momentum_model.')):
        vit = groups.pop('visual_encoder' + suffix, None)
        if vit is not None:
            tensors, bad = convert_albef_vit(vit, target_grid=target_grid)
            out.update({f'{dest}visual_encoder.{k}': v for k, v in tensors.items()})
            unknown += [f'visual_encoder{suffix}.{k}' for k in bad]
        text = groups.pop('text_encoder' + suffix, None)
        if text is not None:
            bert, mlm, bad = _convert_text(
                text, f'text_encoder{suffix}.', drop_mlm_head=drop_mlm_head, unused=unused
            )
            out.update({f'{dest}text_encoder.{k}': v for k, v in bert.items()})
            out.update({f'{dest}mlm_head.{k}': v for k, v in mlm.items()})
            unknown += bad
        for name in _SAME:
            part = groups.pop(name + suffix, None)
            if part is not None and (suffix == '' or name != 'itm_head'):
                out.update({f'{dest}{name}.{k}': v for k, v in part.items()})
            elif part is not None:
                unknown += [f'{name}{suffix}.{k}' for k in part]
    temp = groups.pop('temp', None)
    if temp is not None:
        out['temp'] = temp['']
    queues = {
        name: groups.pop(name)['']
        for name in ('image_queue', 'text_queue', 'idx_queue', 'queue_ptr')
        if name in groups
    }
    if drop_queues:
        unused.update({name: 'queue dropped (drop_queues)' for name in queues})
    elif 'image_queue' in queues or 'text_queue' in queues:
        size = queues.get('image_queue', queues.get('text_queue')).shape[1]
        ids = queues.get('idx_queue', torch.full((1, size), -1, dtype=torch.long)).reshape(-1).long()
        ptr = queues.get('queue_ptr', torch.zeros(1, dtype=torch.long)).reshape(()).long()
        for name in ('image_queue', 'text_queue'):
            if name in queues:
                out[f'{name}.feats'] = queues[name].t().contiguous()
                out[f'{name}.ids'] = ids.clone()
                out[f'{name}.ptr'] = ptr.clone()
                out[f'{name}.count'] = torch.tensor(size, dtype=torch.long)
    else:
        unknown += [name for name in queues]  # idx_queue / queue_ptr without features
    for head, rest in groups.items():
        unknown += [f'{head}.{key}' if key else head for key in rest]
    if unknown:
        if strict:
            raise ValueError(
                f'{len(unknown)} ALBEF tensors cannot be mapped (pass strict=False / --no-strict to '
                f'leave them out): {sorted(unknown)}'
            )
        unused.update({key: 'not an ALBEF tensor we know (strict=False)' for key in unknown})
    if not any(key.startswith('visual_encoder.') for key in out):
        raise ValueError('not an ALBEF checkpoint: no visual_encoder.* tensors')
    out['num_updates'] = torch.zeros((), dtype=torch.long)  # our step counter (alpha warm-up): a fresh start
    return out, unused
