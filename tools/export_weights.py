"""Export the weights of a training checkpoint to safetensors: ``python tools/export_weights.py CKPT OUT``.

A ``.safetensors`` file holds tensors and nothing else, so it can be shared and loaded without trusting
its author; ``tools/test.py CONFIG OUT.safetensors`` and ``load_from = 'OUT.safetensors'`` take it directly.
The training checkpoint is read safely (``weights_only``); optimizer, schedulers and random state are left
out. ``--ema`` exports the EMA weights of an ``EMAHook`` run instead of the raw ones.
"""

from __future__ import annotations

import argparse
import os

import torch

from toolkit.checkpoint import safe_load, save_state_dict_file, strip_prefix


def export_weights(checkpoint: str, out: str, *, ema: bool = False) -> dict[str, torch.Tensor]:
    """Write ``checkpoint``'s model weights to ``out`` (safetensors); return them."""
    ckpt = safe_load(checkpoint)
    key = 'ema_state_dict' if ema else 'state_dict'
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get(key), dict):
        raise ValueError(f'{checkpoint} has no {key!r}: not a training checkpoint of this toolkit')
    state = ckpt[key]
    if ema:  # EMAHook's ExponentialMovingAverage keeps 'module.' names and a step counter
        state = strip_prefix({k: v for k, v in state.items() if k != 'steps'}, 'module.')
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    skipped = sorted(set(state) - set(tensors))
    if skipped:
        raise ValueError(f'{checkpoint}: {key} holds non-tensor entries {skipped[:5]}')
    save_state_dict_file(tensors, out, metadata={'source': os.path.basename(checkpoint), 'weights': key})
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(description='Export checkpoint weights to safetensors')
    parser.add_argument('checkpoint', help='a training checkpoint (.pth)')
    parser.add_argument('out', help='the .safetensors file to write')
    parser.add_argument('--ema', action='store_true', help='export the EMA weights')
    args = parser.parse_args()
    tensors = export_weights(args.checkpoint, args.out, ema=args.ema)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f'{len(tensors)} tensors ({size / 2**20:.1f} MiB) written to {args.out}')


if __name__ == '__main__':
    main()
