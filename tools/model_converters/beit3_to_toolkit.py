"""Convert a released BEiT-3 checkpoint (microsoft/unilm ``beit3/``) into a VL-Toolkit ``BEiT3`` state dict.

    python tools/model_converters/beit3_to_toolkit.py beit3_base_patch16_384_coco_retrieval.pth \
        data/pretrained/beit3/beit3_base_patch16_384_coco_retrieval.safetensors

The key map lives in :mod:`pretrain.models.beit3_converters`. DST is written as ``.safetensors`` or, for any
other extension, a torch file of the bare state dict. ``--strict`` (default) fails naming every source key
that cannot be mapped, every model tensor the checkpoint lacks and every shape that does not fit;
``--no-strict`` converts what maps and lists the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretrain.models.beit3_converters import convert_unilm_beit3
from toolkit.checkpoint import load_state_dict_file, save_state_dict_file, strip_prefix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='unilm checkpoint (.pth with a "model" entry, or .safetensors)')
    parser.add_argument('dst', help='output: .safetensors, or .pth (bare state dict)')
    parser.add_argument(
        '--strict',
        action=argparse.BooleanOptionalAction,
        default=True,
        help='fail on unmapped source keys and missing model tensors (default); --no-strict lists them',
    )
    args = parser.parse_args(argv)
    source = strip_prefix(
        load_state_dict_file(args.src, wrappers=('model', 'module', 'state_dict')), 'module.'
    )
    try:
        tensors, skipped = convert_unilm_beit3(source, strict=args.strict)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    dst = Path(args.dst)
    save_state_dict_file(tensors, dst, metadata={'source': Path(args.src).name})
    for key, why in sorted(skipped.items()):
        print(f'skipped {key}: {why}')
    print(f'converted {len(tensors)} tensors of {args.src} -> {dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
