"""Fixtures of the detection tests: running the repository's tools and pointing a detection config at data."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_tool() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_tool(script, *args)``: the script in a subprocess from the repository root; it must exit 0."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    return run


@pytest.fixture
def det_data_options() -> Callable[..., list[str]]:
    """``--cfg-options`` that point a Shapes World detection config's loaders and evaluators at ``root``;
    ``stage='train'`` adds a two-iteration run (8 images, batch 4, one epoch, no validation) and
    ``stage='test'`` single-process test loading."""
    test_opts = ['test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']
    train_opts = [
        'train_dataloader.batch_size=4',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'train_dataloader.dataset.indices=8',
        *test_opts,
        'train_cfg.max_epochs=1',
        'train_cfg.val_interval=10',
        'default_hooks.logger.interval=1',
    ]

    def options(root: Path, stage: str | None = None) -> list[str]:
        opts = [f'{split}_dataloader.dataset.data_root={root}/' for split in ('train', 'val', 'test')]
        opts += [f'val_evaluator.ann_file={root}/annotations/instances_val.json',
                 f'test_evaluator.ann_file={root}/annotations/instances_test.json']  # fmt: skip
        return opts + {None: [], 'train': train_opts, 'test': test_opts}[stage]

    return options
