"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT [--work-dir DIR]``.

The final metrics are also written as one flat JSON object to ``WORK_DIR/metrics.json``.
"""

from __future__ import annotations

import argparse
import os

from mmengine.config import DictAction

from toolkit.engine import build_runner, load_config, write_metrics


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (evaluate) a checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics.json')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config settings, e.g. a.b=1 c="[1,2]"'
    )
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main() -> None:
    args = parse_args()
    cfg = load_config(
        args.config, work_dir=args.work_dir, cfg_options=args.cfg_options, launcher=args.launcher
    )
    cfg.load_from = args.checkpoint
    runner = build_runner(cfg)
    metrics = runner.test()
    if runner.rank == 0:
        path = write_metrics(metrics, runner.work_dir)
        runner.logger.info(f'metrics written to {path}')


if __name__ == '__main__':
    main()
