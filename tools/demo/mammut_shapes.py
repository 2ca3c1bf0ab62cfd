"""The main job (`make demo`): MaMMUT pretraining on Shapes World, trained and evaluated on CPU.

Generates Shapes World ``small`` if it is absent, trains the tiny MaMMUT config,
evaluates on the held-out test split and prints retrieval R@1/R@5 both ways,
BLEU-4 and CIDEr, a few captions of the final checkpoint (through the library API,
:class:`pretrain.apis.ImageTextInferencer`) beside their references, and the CIDEr
of the best constant caption (the floor a model must beat). Logs, checkpoints,
``metrics.json``, ``predictions_test.json`` and ``loss_curve.png`` go to the work dir.
"""

from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import time

from mmengine.runner import find_latest_checkpoint

from pretrain.apis import ImageTextInferencer
from pretrain.evaluation.caption import constant_caption_baseline
from toolkit.engine import build_runner, load_config, write_metrics
from toolkit.shapes_world import VERSION, generate_shapes_world

DEFAULT_CONFIG = 'configs/mammut/mammut_vit-tiny-dec4_1xb32-30e_shapes-cap.py'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--data-root', default='data/shapes_world_small')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--size', default='small', choices=['tiny', 'small', 'full'])
    parser.add_argument('--seed', type=int, default=0, help='data generation seed')
    parser.add_argument('--max-epochs', type=int, help='override the config schedule (quick runs)')
    parser.add_argument('--show', type=int, default=6, help='generated captions to print')
    return parser.parse_args(argv)


def ensure_data(data_root: str, size: str, seed: int) -> None:
    marker = osp.join(data_root, '.complete')
    if osp.isfile(marker):
        with open(marker) as f:
            info = json.load(f)
        if info.get('size') == size and info.get('seed') == seed and info.get('version') == VERSION:
            print(f'Shapes World {size} found in {data_root}')
            return
    print(f'Generating Shapes World {size} (seed {seed}) in {data_root} ...')
    start = time.perf_counter()
    generate_shapes_world(data_root, seed=seed, size=size, workers=min(2, os.cpu_count() or 1), progress=True)
    print(f'  done in {time.perf_counter() - start:.0f} s')


def print_report(metrics: dict, predictions: list[dict], refs: dict[int, list[str]], floor: tuple[str, float],
                 show: int) -> None:  # fmt: skip
    def get(key: str) -> float:
        return float(next(v for k, v in metrics.items() if k.endswith(key)))

    rows = [
        ('image-to-text R@1', get('i2t_R@1')),
        ('image-to-text R@5', get('i2t_R@5')),
        ('text-to-image R@1', get('t2i_R@1')),
        ('text-to-image R@5', get('t2i_R@5')),
        ('BLEU-4', get('BLEU-4')),
        ('CIDEr', get('CIDEr')),
        ('CIDEr of the best constant caption (floor)', floor[1]),
    ]
    width = max(len(name) for name, _ in rows)
    print('\nMaMMUT on Shapes World (test split)')
    print('-' * (width + 10))
    for name, value in rows:
        print(f'{name:<{width}}  {value:7.3f}')
    print('-' * (width + 10))
    print(f'constant caption: "{floor[0]}"')
    print('\nGenerated captions beside a reference:')
    for pred in predictions[:show]:
        print(f'  image {pred["image_id"]:>4}: {pred["caption"]}')
        print(f'  {"reference":>10}: {refs[pred["image_id"]][0]}')
    targets = get('i2t_R@5') >= 0.5 and get('CIDEr') >= 2.0
    print(f'\nTargets (image-to-text R@5 >= 0.5, CIDEr >= 2.0): {"met" if targets else "NOT met"}')


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ensure_data(args.data_root, args.size, args.seed)
    data_root = args.data_root.rstrip('/') + '/'
    options = {f'{split}_dataloader.dataset.data_root': data_root for split in ('train', 'val', 'test')}
    cfg = load_config(args.config, work_dir=args.work_dir, cfg_options=options)
    if args.max_epochs:
        cfg.train_cfg.max_epochs = args.max_epochs
        cfg.param_scheduler[-1].end = args.max_epochs
    pred_path = osp.join(args.work_dir, 'predictions_test.json')
    cfg.test_evaluator = [dict(type='RetrievalMetric'), dict(type='CaptionMetric', save_path=pred_path)]
    # No validation during the demo's training: the held-out test split is evaluated once, below.
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None

    runner = build_runner(cfg)
    start = time.perf_counter()
    runner.train()
    train_minutes = (time.perf_counter() - start) / 60
    metrics = runner.test()
    write_metrics(metrics, runner.work_dir)

    dataset = runner.test_dataloader.dataset
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    refs = {info['img_id']: info['captions'] for info in infos}
    floor = constant_caption_baseline(refs)
    # The trained checkpoint as a researcher would load it: captions of the first test images.
    checkpoint = find_latest_checkpoint(runner.work_dir)
    if checkpoint is None:
        raise FileNotFoundError(f'training saved no checkpoint in {runner.work_dir}')
    inferencer = ImageTextInferencer(cfg, checkpoint)
    shown = infos[: max(args.show, 0)]
    captions = inferencer.caption([info['img_path'] for info in shown]) if shown else []
    predictions = [
        dict(image_id=info['img_id'], caption=text) for info, text in zip(shown, captions, strict=True)
    ]
    print(f'\nTrained for {train_minutes:.1f} min; work dir: {runner.work_dir}')
    print_report(metrics, predictions, refs, floor, args.show)


if __name__ == '__main__':
    main()
