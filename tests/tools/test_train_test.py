"""End to end: tools/train.py trains, saves and resumes; tools/test.py evaluates and writes metrics.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.checkpoint import safe_load

REPO = Path(__file__).resolve().parents[2]
CONFIG = 'configs/mammut/mammut_vit-tiny-dec4_1xb32-30e_shapes-cap.py'


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _data_options(root: Path) -> list[str]:
    return [f'{split}_dataloader.dataset.data_root={root}/' for split in ('train', 'val', 'test')]


@pytest.mark.slow
def test_train_resume_and_test(shapes_tiny: Path, tmp_path: Path) -> None:
    work = tmp_path / 'work'
    small = [
        'train_cfg.max_epochs=1',
        'train_cfg.val_interval=10',
        'train_cfg.val_begin=1000',  # no validation: mmengine validates at the last epoch otherwise
        'train_dataloader.batch_size=16',
        'model.generation.beam_size=2',
        'model.generation.max_len=12',
    ]
    _run(
        'tools/train.py',
        CONFIG,
        '--work-dir',
        str(work),
        '--cfg-options',
        *_data_options(shapes_tiny),
        *small,
    )
    first = safe_load(work / 'epoch_1.pth')
    assert first['meta']['epoch'] == 1 and (work / 'last_checkpoint').is_file()

    # Resume from the latest checkpoint in the work dir and train one more epoch.
    more = [opt.replace('max_epochs=1', 'max_epochs=2') for opt in small]
    _run('tools/train.py', CONFIG, '--work-dir', str(work), '--resume', '--cfg-options',
         *_data_options(shapes_tiny), *more)  # fmt: skip
    second = safe_load(work / 'epoch_2.pth')
    assert second['meta']['epoch'] == 2 and second['meta']['iter'] == 2 * first['meta']['iter']
    changed = [k for k in first['state_dict'] if not first['state_dict'][k].equal(second['state_dict'][k])]
    assert changed, 'resumed training did not update any weight'
    assert (work / 'loss_curve.png').is_file()

    test_dir = tmp_path / 'test'
    _run('tools/test.py', CONFIG, str(work / 'epoch_2.pth'), '--work-dir', str(test_dir), '--cfg-options',
         *_data_options(shapes_tiny), 'model.generation.beam_size=2',
         'model.generation.max_len=12')  # fmt: skip
    metrics = json.loads((test_dir / 'metrics.json').read_text())
    for key in ('retrieval/i2t_R@1', 'retrieval/t2i_R@5', 'caption/BLEU-4', 'caption/CIDEr'):
        assert key in metrics and isinstance(metrics[key], float)
    assert 0.0 <= metrics['retrieval/i2t_R@5'] <= 1.0


@pytest.mark.slow
def test_dist_train_two_processes(shapes_tiny: Path, tmp_path: Path) -> None:
    """tools/dist_train.sh runs torchrun with two CPU processes (gloo) and saves a checkpoint."""
    import os

    work = tmp_path / 'dist'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable, PORT=str(29500 + os.getpid() % 1000))
    options = [*_data_options(shapes_tiny), 'train_cfg.max_epochs=1', 'train_dataloader.batch_size=8',
               'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False']  # fmt: skip
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', str(work), '--cfg-options', *options],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = safe_load(work / 'epoch_1.pth')
    # 48 training images, 2 processes x 8 per batch -> 3 iterations.
    assert ckpt['meta']['iter'] == 3
    assert (
        'world_size: 2' in proc.stdout + proc.stderr
        or 'Distributed launcher: pytorch' in proc.stdout + proc.stderr
    )
