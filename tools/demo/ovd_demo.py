"""Open-vocabulary detection demo: FIBER or MaMMUT boxes for any category names in images, folders, videos.

``python tools/demo/ovd_demo.py INPUT --texts "red circle . blue square" --config C --checkpoint K --out OUT``

A command-line wrapper of :class:`detection.apis.OVDetInferencer` (see it for how each detector reads the
names and what the scores are). INPUT is an image, a folder (its .jpg/.jpeg/.png/.bmp/.webp files, sorted by
name) or a video (.mp4/.avi/.mov/.mkv/.webm/.m4v, every ``--frame-stride``-th frame). Writes

* ``OUT/vis/<name>.jpg`` (images) or ``OUT/vis/<name>.mp4`` (the processed frames at ``fps / stride``);
* ``OUT/detections.json``: the settings, ``results`` (per image or frame: ``source``, ``frame``, ``width``,
  ``height``, ``names``, ``detections`` with ``name``, ``score``, ``bbox`` [x1, y1, x2, y2] in the input's
  own pixels) and ``skipped`` inputs with the reason (``--skip-bad``);
* ``OUT/results.json``: the detections in COCO results format (``--categories``: a COCO JSON whose category
  and image ids to use);

and prints the detections per name. The names are checked before any input is read; checkpoints load
safely (``weights_only``).
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from mmengine.config import DictAction

from detection.apis import DetectionInputError, DetectionResult, OVDetInferencer, parse_names
from toolkit.apis import CheckpointMismatchError
from toolkit.checkpoint import UnsafeCheckpointError


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {number}')
    return number


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('input', help='an image, a folder of images or a video')
    parser.add_argument('--texts', required=True, help='category names separated by " . "')
    parser.add_argument('--config', required=True, help='detector config (a FIBER or MaMMUT detector)')
    parser.add_argument(
        '--checkpoint', required=True, help='tools/train.py checkpoint, state dict or .safetensors'
    )
    parser.add_argument('--out', required=True, help='output folder (vis/, detections.json, results.json)')
    parser.add_argument('--score-thr', type=float, default=0.3, help='keep detections scoring at least this')
    parser.add_argument('--max-dets', type=_positive_int, default=100, help='detections per image at most')
    parser.add_argument('--device', default='cpu', help='torch device, e.g. cpu, cuda, cuda:1')
    parser.add_argument('--batch-size', type=_positive_int, default=8, help='images or frames per forward')
    parser.add_argument('--frame-stride', type=_positive_int, default=1, help='videos: every Nth frame')
    parser.add_argument('--categories', help='a COCO JSON: its category and image ids for results.json')
    parser.add_argument('--skip-bad', action='store_true', help='skip unreadable inputs, report them')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='config overrides, e.g. model.test_cfg.chunked_size=8',
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.score_thr <= 1.0:
        parser.error(f'--score-thr must be in [0, 1], got {args.score_thr}')
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo; returns ``{'results': [...], 'skipped': [...]}`` as in ``detections.json``."""
    args = parse_args(argv)
    names = parse_names(args.texts)
    if not osp.exists(args.input):
        raise DetectionInputError(f'input {args.input} does not exist')
    inferencer = OVDetInferencer(
        args.config, args.checkpoint, device=args.device, cfg_options=args.cfg_options
    )
    inferencer.vocabulary(names)  # bad names fail here, before any input is read
    results = inferencer(
        args.input,
        names,
        score_thr=args.score_thr,
        max_dets=args.max_dets,
        batch_size=args.batch_size,
        frame_stride=args.frame_stride,
        out_dir=args.out,
        categories=args.categories,
        on_error='skip' if args.skip_bad else 'raise',
    )
    _print_summary(results, names, args)
    done = [r for r in results if r.error is None]
    if not done:
        raise DetectionInputError(f'no readable input in {args.input}: {len(results)} skipped')
    return dict(results=[r.to_dict() for r in done],
                skipped=[dict(source=r.source, reason=r.error) for r in results if r.error])  # fmt: skip


def _print_summary(results: list[DetectionResult], names: Sequence[str], args: argparse.Namespace) -> None:
    done = [r for r in results if r.error is None]
    counts = Counter(d.name for r in done for d in r.detections)
    unit = 'frames' if any(r.frame is not None for r in done) else 'images'
    print(f'{len(done)} {unit}, {sum(counts.values())} detections with score >= {args.score_thr}:')
    width = max(len(name) for name in names)
    for name in names:
        print(f'  {name:<{width}}  {counts.get(name, 0)}')
    if skipped := [r for r in results if r.error]:
        print(f'skipped {len(skipped)} unreadable inputs:')
        for result in skipped:
            print(f'  {result.error}')
    print(f'detections: {osp.join(args.out, "detections.json")}; drawings: {osp.join(args.out, "vis")}')


if __name__ == '__main__':
    try:
        main()
    except (DetectionInputError, FileNotFoundError, UnsafeCheckpointError, CheckpointMismatchError) as error:
        sys.exit(f'ovd_demo: error: {error}')
