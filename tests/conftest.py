"""Shared fixtures: a tiny Shapes World data set generated once per test session, runs of the repository's
tools, the short trainings that several tests use (trained once per session), and a loader of the benchmark
scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session', autouse=True)
def _toolkit_scope() -> None:
    """Build by our names, as configs with ``default_scope = 'toolkit'`` do."""
    from mmengine.registry import init_default_scope

    import toolkit.registry  # noqa: F401  (creates the toolkit-scoped registries)

    init_default_scope('toolkit')


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO


@pytest.fixture
def load_benchmark() -> Iterator[Callable[[str], ModuleType]]:
    """``load_benchmark('video_pipeline')`` imports ``tools/benchmark/video_pipeline.py`` by path (the scripts
    import only the installed packages); the torch thread count the scripts set is restored afterwards."""
    from toolkit.testing.scripts import load_script

    threads = torch.get_num_threads()

    def load(name: str) -> ModuleType:
        return load_script(REPO / 'tools' / 'benchmark' / f'{name}.py', f'benchmark_{name}')

    yield load
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def shapes_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shapes World ``tiny`` (seconds to make), shared by every test that needs data."""
    from toolkit.shapes_world import generate_shapes_world

    out = tmp_path_factory.mktemp('shapes_world_tiny')
    generate_shapes_world(out, seed=0, size='tiny', workers=1)
    return out


@pytest.fixture(scope='session')
def run_tool() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_tool(script, *args)``: the script in a subprocess from the repository root; it must exit 0."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    return run


@pytest.fixture(scope='session')
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
        'train_cfg.val_begin=1000',  # no validation: mmengine validates at the last epoch otherwise
        'default_hooks.logger.interval=1',
    ]

    def options(root: Path, stage: str | None = None) -> list[str]:
        opts = [f'{split}_dataloader.dataset.data_root={root}/' for split in ('train', 'val', 'test')]
        opts += [f'val_evaluator.ann_file={root}/annotations/instances_val.json',
                 f'test_evaluator.ann_file={root}/annotations/instances_test.json']  # fmt: skip
        return opts + {None: [], 'train': train_opts, 'test': test_opts}[stage]

    return options


FIBER_SHAPES = 'configs/fiber/fiber_swin-tiny-roberta-tiny_fpn-dyhead_1xb16-24e_shapes-ov.py'
VIDEO_SHAPES = 'configs/mammut/mammut_tubevit-tiny-dec4_1xb32-40e_shapes-vid.py'
VIDEO_SMALL = [
    'train_dataloader.batch_size=4',
    'train_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False',
    'model.generation.beam_size=2',
    'model.generation.max_len=8',
]


@pytest.fixture(scope='session')
def fiber_shapes_run(
    shapes_tiny: Path, tmp_path_factory: pytest.TempPathFactory, run_tool, det_data_options
) -> Path:
    """The work dir of a 2-iteration ``tools/train.py`` run of the Shapes World FIBER detector on Shapes World
    tiny (``epoch_1.pth``), shared by the detector's end-to-end test and the web app's."""
    work = tmp_path_factory.mktemp('fiber_shapes_run')
    run_tool('tools/train.py', FIBER_SHAPES, '--work-dir', str(work), '--cfg-options',
             *det_data_options(shapes_tiny, 'train'))  # fmt: skip
    return work


@pytest.fixture(scope='session')
def video_shapes_run(shapes_tiny: Path, tmp_path_factory: pytest.TempPathFactory, run_tool) -> Path:
    """The work dir of the Shapes World video config trained by ``tools/train.py`` on Shapes World tiny for
    one epoch (``epoch_1.pth``, 2 iterations of 4 clips), then resumed for a second (``epoch_2.pth``):
    shared by the video end-to-end test and the web app's."""
    work = tmp_path_factory.mktemp('video_shapes_run')
    data = [f'{split}_dataloader.dataset.data_root={shapes_tiny}/' for split in ('train', 'val', 'test')]
    once = ['train_cfg.max_epochs=1', 'train_cfg.val_begin=1000', *VIDEO_SMALL]  # no validation
    run_tool('tools/train.py', VIDEO_SHAPES, '--work-dir', str(work), '--cfg-options', *data, *once)
    twice = [option.replace('max_epochs=1', 'max_epochs=2') for option in once]
    run_tool(
        'tools/train.py', VIDEO_SHAPES, '--work-dir', str(work), '--resume', '--cfg-options', *data, *twice
    )
    return work
