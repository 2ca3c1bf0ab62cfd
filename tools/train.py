"""Train a model from a config: ``python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]]``.

``--resume`` without a path continues from the newest checkpoint in the work dir whose size and SHA-256
match the record written at save time (falling back past truncated or corrupted ones, with a warning).
"""

from __future__ import annotations

import argparse
import os

from mmengine.config import DictAction

from toolkit.engine import build_runner, load_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and checkpoints')
    parser.add_argument(
        '--resume',
        nargs='?',
        const='auto',
        help='resume from this checkpoint, or without a value from the latest one in the work dir',
    )
    parser.add_argument(
        '--resume-allow-mismatch',
        action='store_true',
        help='resume even if the world size, batch size or dataset differ from the checkpoint',
    )
    parser.add_argument(
        '--on-nonfinite',
        choices=['error', 'skip'],
        help='a NaN/inf loss stops training (error, the default) or skips the step (skip, counted)',
    )
    parser.add_argument('--amp', action='store_true', help='mixed precision (fp16 on CUDA, bf16 on CPU)')
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
        args.config,
        work_dir=args.work_dir,
        cfg_options=args.cfg_options,
        launcher=args.launcher,
        amp=args.amp,
    )
    if args.resume_allow_mismatch:
        cfg.resume_allow_mismatch = True
    if args.on_nonfinite is not None:
        hooks = [h for h in cfg.get('custom_hooks', []) or [] if h.get('type') != 'NonFiniteGuardHook']
        cfg.custom_hooks = [*hooks, dict(type='NonFiniteGuardHook', action=args.on_nonfinite)]
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    build_runner(cfg).train()


if __name__ == '__main__':
    main()
