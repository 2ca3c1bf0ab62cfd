"""Convert an openMaMMUT checkpoint (LAION-AI/open_clip_mammut) to our MaMMUT: ``SRC DST``.

    python tools/model_converters/openmammut_to_toolkit.py \\
        open_clip_model.safetensors mammut_openmammut-vit-l14.safetensors \\
        --config configs/mammut/mammut_openmammut-vit-l14-dec12_converted_datacomp-1.4b.py

SRC: the fork's ``MaMMUT`` state dict (``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``
of a released model, or a training checkpoint with ``state_dict``). DST: ``.safetensors`` or a torch file
(``.pth``), by extension. The key map lives in :mod:`pretrain.models.openmammut_converters`. With
``--config`` the result is also checked against the config's model: every key it lacks, every key it would
leave at its initialisation and every shape that differs are listed.

``--strict`` (the default) fails on any source tensor left out (e.g. token-embedding rows past the
captioning vocabulary); ``--no-strict`` writes the file and lists them.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from pretrain.models.openmammut_converters import OpenMaMMUTConversionError, convert_openmammut
from toolkit.checkpoint import load_state_dict_file, save_state_dict_file, state_dict_mismatch


def _check_against_config(tensors: dict[str, torch.Tensor], config: str) -> list[str]:
    from toolkit.apis import init_model

    mismatch = state_dict_mismatch(tensors, init_model(config).state_dict())
    return [
        *(
            f'{key}: the model has no such tensor (check the config switches)'
            for key in mismatch['unexpected']
        ),
        *mismatch['shape'],
        *(f'{key}: the checkpoint does not provide it' for key in mismatch['missing']),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description='openMaMMUT (open_clip_mammut) -> toolkit MaMMUT weights')
    parser.add_argument('src', help='openMaMMUT state dict (.safetensors, .bin, .pt)')
    parser.add_argument('dst', help='output file: .safetensors, else a torch file')
    parser.add_argument('--config', help="check the result against this config's model")
    parser.add_argument('--strict', action=argparse.BooleanOptionalAction, default=True,
                        help='fail on source tensors left out (default); --no-strict lists them')  # fmt: skip
    args = parser.parse_args()

    try:
        tensors, unused = convert_openmammut(load_state_dict_file(args.src, wrappers=('state_dict', 'model')))
    except OpenMaMMUTConversionError as err:
        sys.exit(str(err))
    problems = _check_against_config(tensors, args.config) if args.config else []
    if problems:
        sys.exit(f'{args.src} does not fit {args.config}:\n  ' + '\n  '.join(problems))
    if unused:
        listing = '\n  '.join(f'{key}: {reason}' for key, reason in sorted(unused.items()))
        if args.strict:
            sys.exit(f'source tensors left out (pass --no-strict to accept):\n  {listing}')
        print(f'left out:\n  {listing}')
    save_state_dict_file(
        tensors, args.dst, metadata={'source': os.path.basename(args.src), 'format': 'openmammut'}
    )
    print(f'{len(tensors)} tensors written to {args.dst}')


if __name__ == '__main__':
    main()
