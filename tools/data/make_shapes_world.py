"""Write a Shapes World data set (COCO / LVIS / MSR-VTT formats) to a folder: the CLI of
:func:`toolkit.shapes_world.generate_shapes_world`.

    python tools/data/make_shapes_world.py --out data/shapes_world_small --seed 0 --size small
"""

from __future__ import annotations

import argparse
import json
import os

from toolkit.shapes_world import SIZES, generate_shapes_world


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help='output folder (its generated parts are replaced)')
    parser.add_argument('--seed', type=int, default=0, help='the same seed gives the same data set')
    parser.add_argument('--size', choices=sorted(SIZES), default='small')
    parser.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1), help='render processes')
    parser.add_argument('--image-size', type=int, default=128)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    summary = generate_shapes_world(
        args.out, seed=args.seed, size=args.size, workers=args.workers, image_size=args.image_size, progress=True
    )
    print(json.dumps({key: summary[key] for key in ('images', 'instances', 'videos', 'elapsed_s') if key in summary}))


if __name__ == '__main__':
    main()
