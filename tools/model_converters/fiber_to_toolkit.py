"""Convert an official FIBER checkpoint (microsoft/FIBER) to ``FIBERBackbone`` weights.

    python tools/model_converters/fiber_to_toolkit.py fiber_pretrain.ckpt \
        data/pretrained/fiber-b_coarse-pretrain_backbone.safetensors

SRC: a coarse-grained ``FIBERTransformerSS`` Lightning checkpoint (``fiber_pretrain.ckpt`` and its task
fine-tunes: ``state_dict`` with ``vit_model.*`` / ``text_transformer.*``) or a fine-grained
``GeneralizedVLRCNN`` one (``fusion_backbone.*``). DST: ``.safetensors`` or ``.pth`` (by extension) with the
bare ``FIBERBackbone`` keys, which the released-weights configs load through ``backbone.init_cfg``. The key
mapping is :func:`pretrain.models.fiber_converters.convert_fiber_state_dict`.

``--config`` (default: the FIBER-B coarse released-weights config) names the model whose backbone the weights
must fit: it is built at random init (no files read; about 1 GB of memory at FIBER-B) and every shape, and
(strict) every backbone key, is checked against it. Strict (the default) fails, naming them all, on keys that
are neither backbone tensors nor FIBER's known heads, on backbone keys the checkpoint does not provide and on
shapes that do not fit; ``--no-strict`` writes what maps and lists the rest. FIBER's heads (ITC/ITM/MLM
transforms and poolers, VQA/NLVR2 classifiers, queues) are never converted: our heads differ in layout.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from pretrain.models.fiber_converters import UNRECOGNISED, convert_fiber_state_dict
from toolkit.checkpoint import load_state_dict_file, save_state_dict_file
from toolkit.registry import MODELS

DEFAULT_CONFIG = 'configs/fiber/fiber_swin-b-roberta-base_64xb64-100k_coco-cc3m-coarse-pretrain_released.py'


def target_shapes(config: str) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of the config's ``model.backbone`` (built on the CPU at random init:
    mmdet's Swin reads its drop-path rates with ``.item()``, which the meta device refuses)."""
    cfg = Config.fromfile(config)
    init_default_scope(cfg.get('default_scope', 'toolkit'))
    backbone = cfg.model.backbone.to_dict()
    backbone.pop('init_cfg', None)
    model = MODELS.build(backbone)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def convert(src: str, dst: str, *, config: str, strict: bool = True) -> dict[str, torch.Tensor]:
    state_dict = load_state_dict_file(src, wrappers=('state_dict', 'model', 'module'))
    tensors, unused = convert_fiber_state_dict(state_dict)
    target = target_shapes(config)
    problems = [f'unmapped key {key}: {why}' for key, why in sorted(unused.items()) if why == UNRECOGNISED]
    problems += [
        f'shape of {key}: checkpoint {tuple(value.shape)}, model {target[key]}'
        for key, value in sorted(tensors.items())
        if key in target and tuple(value.shape) != target[key]
    ]
    problems += [f'key {key} has no place in the model' for key in sorted(set(tensors) - set(target))]
    # Buffers the model rebuilds itself (relative-position index, shift masks, RoBERTa's id buffers).
    rebuilt = ('relative_position_index', 'attn_mask', 'position_ids', 'token_type_ids')
    missing = sorted(k for k in set(target) - set(tensors) if not k.endswith(rebuilt))
    problems += [f'model key {key} not in the checkpoint' for key in missing]
    for key, why in sorted(unused.items()):
        if why != UNRECOGNISED:
            print(f'left out {key}: {why}')
    if problems:
        message = f'{src} -> {config}: ' + '; '.join(problems)
        if strict:
            raise SystemExit(message + '\n(--no-strict writes what maps)')
        print(f'warning (--no-strict): {message}', file=sys.stderr)
        tensors = {k: v for k, v in tensors.items() if k in target and tuple(v.shape) == target[k]}
    if not dst.endswith(('.safetensors', '.pth', '.pt')):
        raise SystemExit(f'{dst}: the destination must end in .safetensors or .pth')
    save_state_dict_file(
        tensors, dst, metadata={'source': os.path.basename(src), 'converter': Path(__file__).name}
    )
    print(f'wrote {len(tensors)} tensors to {dst}')
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(
        description='Convert an official FIBER checkpoint to FIBERBackbone weights'
    )
    parser.add_argument('src', help='official checkpoint (.ckpt / .pth / .safetensors)')
    parser.add_argument('dst', help='output file (.safetensors or .pth)')
    parser.add_argument('--config', default=DEFAULT_CONFIG, help='config whose model.backbone must fit')
    parser.add_argument('--strict', action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    convert(args.src, args.dst, config=args.config, strict=args.strict)


if __name__ == '__main__':
    main()
