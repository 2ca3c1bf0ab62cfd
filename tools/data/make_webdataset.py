"""Write an image-caption data set (COCO captions JSON + image folder) as WebDataset tar shards.

    python tools/data/make_webdataset.py --ann-file data/shapes_world_small/annotations/captions_train.json \\
        --img-dir data/shapes_world_small/images/train --out data/shapes_world_small/wds \\
        --prefix shapes-train --num-shards 8

Each image becomes one sample: ``KEY.jpg`` (the file's bytes, unchanged), ``KEY.txt`` (its first caption)
and ``KEY.json`` (``img_id``, ``file_name`` and all ``captions``), with ``KEY`` the sample's running number.
The samples are shuffled (``--seed``) before they are cut into ``--num-shards`` shards of equal size (+-1),
since a reader only shuffles shard order and a small buffer: images of one source folder or class would
otherwise arrive together. ``sizes.json`` (open_clip's ``{shard: samples}``) is written beside the shards
(merged with one already there) so that ``WebDataset`` knows the epoch length; the last line printed is a
JSON summary with the brace pattern to put in a config.

Use at least ``processes x data-loader workers`` shards, ideally a multiple of it (see
``pretrain/datasets/webdataset.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import random
from collections.abc import Iterator
from typing import Any

from pretrain.datasets.image_text import ImageCaptionDataset
from pretrain.datasets.tar_shards import write_shard


def _sample(index: int, record: dict[str, Any]) -> tuple[str, dict[str, bytes]]:
    with open(record['img_path'], 'rb') as f:
        image = f.read()
    ext = osp.splitext(record['img_path'])[1].lstrip('.').lower() or 'jpg'
    meta = dict(
        img_id=record['img_id'], file_name=osp.basename(record['img_path']), captions=record['captions']
    )
    return f'{index:09d}', {
        ext: image,
        'txt': record['captions'][0].encode('utf-8'),
        'json': json.dumps(meta, sort_keys=True).encode('utf-8'),
    }


def convert_captions(
    ann_file: str, img_dir: str, out_dir: str, *, prefix: str, num_shards: int, seed: int | None = 0
) -> dict[str, Any]:
    """Write ``num_shards`` shards ``OUT/PREFIX-000000.tar ...`` and ``OUT/sizes.json``; return a summary
    (``pattern``, ``shards``, ``samples``, ``sizes``). ``seed=None`` keeps the annotation file's order."""
    if num_shards < 1:
        raise ValueError(f'num_shards must be >= 1, got {num_shards}')
    dataset = ImageCaptionDataset(ann_file=ann_file, data_prefix=dict(img_path=img_dir), serialize_data=False)
    records = [dataset.get_data_info(i) for i in range(len(dataset))]
    if seed is not None:
        random.Random(seed).shuffle(records)
    if num_shards > len(records):
        raise ValueError(f'{len(records)} images cannot fill {num_shards} shards')
    os.makedirs(out_dir, exist_ok=True)
    names = [f'{prefix}-{i:06d}.tar' for i in range(num_shards)]
    sizes: dict[str, int] = {}
    bounds = [len(records) * i // num_shards for i in range(num_shards + 1)]
    for shard, name in enumerate(names):
        start, stop = bounds[shard], bounds[shard + 1]

        def samples(start: int = start, stop: int = stop) -> Iterator[tuple[str, dict[str, bytes]]]:
            for index in range(start, stop):
                yield _sample(index, records[index])

        sizes[name] = write_shard(osp.join(out_dir, name), samples())
    sizes_path = osp.join(out_dir, 'sizes.json')
    table: dict[str, int] = {}
    if osp.isfile(sizes_path):
        with open(sizes_path) as f:
            table = json.load(f)
    table.update(sizes)
    tmp = f'{sizes_path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
        json.dump(dict(sorted(table.items())), f, indent=1)
    os.replace(tmp, sizes_path)
    pattern = f'{prefix}-{{000000..{num_shards - 1:06d}}}.tar'
    return dict(pattern=pattern, shards=num_shards, samples=len(records), sizes=sizes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--ann-file', required=True, help='COCO captions JSON')
    parser.add_argument('--img-dir', required=True, help='folder the file_name entries are relative to')
    parser.add_argument('--out', required=True, help='output folder of the shards and sizes.json')
    parser.add_argument('--prefix', required=True, help='shard name prefix, e.g. cc3m-train')
    parser.add_argument('--num-shards', type=int, required=True)
    parser.add_argument('--seed', type=int, default=0, help='sample shuffle seed')
    parser.add_argument('--no-shuffle', action='store_true', help="keep the annotation file's order")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    summary = convert_captions(
        args.ann_file,
        args.img_dir,
        args.out,
        prefix=args.prefix,
        num_shards=args.num_shards,
        seed=None if args.no_shuffle else args.seed,
    )
    print(json.dumps({k: summary[k] for k in ('pattern', 'shards', 'samples')}))


if __name__ == '__main__':
    main()
