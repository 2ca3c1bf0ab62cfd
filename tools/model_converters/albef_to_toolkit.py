"""Convert a released ALBEF checkpoint (salesforce/ALBEF) into a VL-Toolkit ``ALBEF`` state dict.

    python tools/model_converters/albef_to_toolkit.py mscoco.pth data/pretrained/albef/mscoco.safetensors
    python tools/model_converters/albef_to_toolkit.py ALBEF.pth data/pretrained/albef/ALBEF_384.safetensors \
        --img-size 384 --drop-mlm-head   # the 14M pretrained model as the start of retrieval fine-tuning

Reads both official classes: pretraining (``ALBEF.pth``, ``ALBEF_4M.pth``: ``text_encoder.bert.*`` and the MLM
head ``text_encoder.cls.*``) and retrieval (``mscoco.pth``, ``flickr30k.pth``: ``text_encoder.*``,
``idx_queue``). The momentum copies (``*_m``) and the queues are kept: our model has both. The key map lives
in :mod:`pretrain.models.albef_converters`. DST is written as ``.safetensors`` or, for any other extension, a
torch file of the bare state dict. ``--strict`` (default) fails naming every source key that cannot be mapped;
``--no-strict`` converts what maps and lists the rest. ``--config`` checks the result against that config's
model first, naming every key it lacks or does not provide and every shape that does not fit (without it,
``toolkit.apis.init_model`` does the same when the result is loaded).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretrain.models.albef_converters import convert_albef_checkpoint
from toolkit.checkpoint import load_state_dict_file, save_state_dict_file, state_dict_mismatch, strip_prefix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='ALBEF checkpoint (.pth with a "model" entry, or .safetensors)')
    parser.add_argument('dst', help='output: .safetensors, or .pth (bare state dict)')
    parser.add_argument(
        '--strict',
        action=argparse.BooleanOptionalAction,
        default=True,
        help='fail on source keys that cannot be mapped (default); --no-strict lists and leaves them out',
    )
    parser.add_argument(
        '--drop-mlm-head',
        action='store_true',
        help='leave text_encoder[_m].cls.* out, for a config with with_mlm=False (retrieval)',
    )
    parser.add_argument(
        '--drop-queues', action='store_true', help='leave the queues out (a config with another queue_size)'
    )
    parser.add_argument(
        '--img-size',
        type=int,
        default=None,
        help='resize the position embeddings (bicubic, as ALBEF) to this image size (patch 16)',
    )
    parser.add_argument('--patch-size', type=int, default=16, help='ViT patch size (ALBEF 16)')
    parser.add_argument('--config', help="check the result against this config's model")
    args = parser.parse_args(argv)
    source = strip_prefix(
        load_state_dict_file(args.src, wrappers=('model', 'module', 'state_dict')), 'module.'
    )
    grid = None if args.img_size is None else args.img_size // args.patch_size
    try:
        tensors, skipped = convert_albef_checkpoint(
            source,
            strict=args.strict,
            drop_mlm_head=args.drop_mlm_head,
            drop_queues=args.drop_queues,
            target_grid=grid,
        )
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    if args.config:
        from toolkit.apis import init_model

        mismatch = state_dict_mismatch(tensors, init_model(args.config).state_dict())
        if problems := [f'{kind}: {item}' for kind, items in mismatch.items() for item in items]:
            print(
                f'error: {args.src} does not fit {args.config}:\n  ' + '\n  '.join(problems), file=sys.stderr
            )
            return 1
    dst = Path(args.dst)
    save_state_dict_file(tensors, dst, metadata={'source': Path(args.src).name})
    for key, why in sorted(skipped.items()):
        print(f'skipped {key}: {why}')
    print(f'converted {len(tensors)} tensors of {args.src} -> {dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
