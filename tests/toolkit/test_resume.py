"""Exact resume, atomic and verified checkpoints, refused mismatches, non-finite losses (ToolkitRunner)."""

from __future__ import annotations

import itertools
import json
import os
import random
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from torch.utils.data import Dataset

from toolkit.checkpoint import UnsafeCheckpointError, safe_load, verify_checkpoint
from toolkit.engine import build_runner
from toolkit.hooks import NonFiniteLossError
from toolkit.registry import DATASETS, HOOKS, MODELS
from toolkit.runner import ResumeMismatchError
from toolkit.watchdog import SampleTimeoutError


@DATASETS.register_module(force=True)
class _NoisyPoints(Dataset):
    """Points with augmentation drawn from all three global generators, as real pipelines do."""

    METAINFO = dict(classes=('point',))

    def __init__(self, size: int = 20, classes: tuple[str, ...] = ('point',)) -> None:
        self.size = size
        self.metainfo = dict(classes=classes)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        base = torch.arange(4, dtype=torch.float32) + i
        noise = torch.randn(4) * 0.1 + float(np.random.uniform(-0.1, 0.1)) + random.uniform(-0.1, 0.1)
        return dict(inputs=base + noise, target=torch.tensor([float(i % 3)]))


@MODELS.register_module(force=True)
class _DropoutRegressor(BaseModel):
    """A model that draws randomness in training (dropout and a random loss weight)."""

    def __init__(self, nan_at_iter: int | None = None) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))
        self.nan_at_iter = nan_at_iter
        self.calls = 0

    def forward(self, inputs, target=None, data_samples=None, mode='loss'):  # type: ignore[no-untyped-def]
        self.calls += 1
        pred = self.net(torch.stack(inputs))
        loss_fit = (pred - torch.stack(target)).pow(2).mean() * (1 + torch.rand(()))
        loss_reg = self.net[0].weight.pow(2).mean() * 1e-3
        if self.nan_at_iter is not None and self.calls == self.nan_at_iter:
            loss_reg = loss_reg * float('nan')
        return dict(loss_fit=loss_fit, loss_reg=loss_reg)


@HOOKS.register_module(force=True)
class _RecordLosses(Hook):
    priority = 'LOWEST'

    def __init__(self, out: str, stop_after: int | None = None) -> None:
        self.out, self.stop_after = out, stop_after

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):  # type: ignore[no-untyped-def]
        with open(self.out, 'a') as f:
            f.write(json.dumps([runner.iter + 1, {k: float(v.detach()) for k, v in outputs.items()}]) + '\n')
        if self.stop_after is not None and runner.iter + 1 == self.stop_after:
            raise _Stop()


class _Stop(Exception):
    """Stands for the process being killed right after the checkpoint of an iteration."""


_RUN_IDS = itertools.count()


def _cfg(
    work_dir: Path,
    *,
    by_epoch: bool = True,
    sampler: str = 'DefaultSampler',
    workers: int = 0,
    record: Path,
    stop_after: int | None = None,
    ckpt_interval: int = 1,
    **extra: Any,
) -> Config:
    train_cfg = dict(by_epoch=True, max_epochs=3) if by_epoch else dict(by_epoch=False, max_iters=15)
    cfg = dict(
        model=dict(type='_DropoutRegressor'),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=dict(type='_NoisyPoints', size=20),
            batch_size=4,
            sampler=dict(type=sampler, shuffle=True),
            num_workers=workers,
            persistent_workers=workers > 0,
        ),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-2)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=ckpt_interval, by_epoch=False, max_keep_ckpts=3),
            logger=dict(type='LoggerHook', interval=50),
        ),
        custom_hooks=[dict(type='_RecordLosses', out=str(record), stop_after=stop_after)],
        randomness=dict(seed=7),
        default_scope='toolkit',
        log_level='WARNING',
        # One message hub per runner: MMEngine shares instances by name, and the default name (a
        # timestamp) repeats for runners built within one second.
        experiment_name=f'{work_dir.name}-{next(_RUN_IDS)}',
    )
    cfg.update(extra)
    return Config(cfg)


def _read(record: Path) -> list[tuple[int, dict[str, float]]]:
    return [tuple(json.loads(line)) for line in record.read_text().splitlines()]  # type: ignore[misc]


def _weights(runner: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in runner.model.state_dict().items()}


@pytest.mark.parametrize(
    'stop_after,by_epoch,sampler,workers',
    [
        (7, True, 'DefaultSampler', 0),  # mid-epoch (5 batches per epoch)
        (5, True, 'DefaultSampler', 2),  # at an epoch boundary, with data-loader workers
        (8, False, 'DefaultSampler', 0),  # iteration loop, crossing epochs after the resume
        (6, False, 'InfiniteSampler', 2),
    ],
)
def test_resume_is_bit_exact(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stop_after: int,
    by_epoch: bool,
    sampler: str,
    workers: int,
) -> None:
    import mmengine.runner.loops

    # MMEngine's iteration loop sleeps 2 s at each restart of a finite loader; not what is tested here.
    monkeypatch.setattr(mmengine.runner.loops, 'time', types.SimpleNamespace(sleep=lambda seconds: None))
    full_rec, part_rec = tmp_path / 'full.jsonl', tmp_path / 'part.jsonl'
    setup = dict(by_epoch=by_epoch, sampler=sampler, workers=workers)
    full = build_runner(_cfg(tmp_path / 'full', record=full_rec, **setup))
    full.train()
    first = build_runner(_cfg(tmp_path / 'part', record=part_rec, stop_after=stop_after, **setup))
    with pytest.raises(_Stop):
        first.train()
    second = build_runner(_cfg(tmp_path / 'part', record=part_rec, resume=True, **setup))
    second.train()
    assert _read(part_rec) == _read(full_rec)  # every iteration's every loss term, bit for bit
    assert len(_read(full_rec)) == 15
    for (name, a), b in zip(_weights(full).items(), _weights(second).values(), strict=True):
        assert torch.equal(a, b), name


def test_truncated_checkpoint_falls_back_to_previous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = tmp_path / 'rec.jsonl'
    with pytest.raises(_Stop):
        build_runner(_cfg(tmp_path / 'w', record=record, stop_after=6)).train()
    latest, previous = tmp_path / 'w' / 'iter_6.pth', tmp_path / 'w' / 'iter_5.pth'
    assert verify_checkpoint(str(latest)) is None and verify_checkpoint(str(previous)) is None
    assert not (tmp_path / 'w' / 'iter_3.pth').exists()  # pruned to max_keep_ckpts=3, records too
    assert not (tmp_path / 'w' / 'iter_3.pth.record.json').exists()
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])  # killed mid-write by a tool that does not write atomically
    assert 'truncated' in str(verify_checkpoint(str(latest)))
    runner = build_runner(_cfg(tmp_path / 'w', record=record, resume=True))
    runner.load_or_resume()
    assert runner.iter == 5
    # A flipped byte of the same size is caught by the hash.
    data = bytearray(previous.read_bytes())
    data[len(data) // 2] ^= 0xFF
    previous.write_bytes(bytes(data))
    assert 'corrupted' in str(verify_checkpoint(str(previous)))
    runner = build_runner(_cfg(tmp_path / 'w', record=record, resume=True))
    runner.load_or_resume()
    assert runner.iter == 4
    # Asking for the bad file by name is an error, not a silent fallback.
    runner = build_runner(_cfg(tmp_path / 'w', record=record, resume=True, load_from=str(latest)))
    with pytest.raises(UnsafeCheckpointError, match='iter_6.pth is truncated'):
        runner.load_or_resume()


def test_interrupted_save_leaves_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash inside torch.save (the temporary file half written) leaves the old files intact."""
    record = tmp_path / 'rec.jsonl'
    with pytest.raises(_Stop):
        build_runner(_cfg(tmp_path / 'w', record=record, stop_after=2)).train()
    work = tmp_path / 'w'
    before = sorted(os.listdir(work))
    pointer = (work / 'last_checkpoint').read_text()

    real_save = torch.save

    def dying_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, f, *args, **kwargs)
        raise KeyboardInterrupt('killed during the save')

    runner = build_runner(_cfg(work, record=record, resume=True))
    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt):
        runner.train()
    monkeypatch.undo()
    after = sorted(p for p in os.listdir(work) if not p.endswith('.log') and not p[0].isdigit())
    assert [p for p in after if p.endswith('.tmp')] == []
    assert (work / 'last_checkpoint').read_text() == pointer
    assert {p for p in before if 'iter_' in p} <= set(after)
    assert verify_checkpoint(str(work / 'iter_2.pth')) is None


def test_resume_refuses_a_different_setup(tmp_path: Path) -> None:
    record = tmp_path / 'rec.jsonl'
    with pytest.raises(_Stop):
        build_runner(_cfg(tmp_path / 'w', record=record, stop_after=2)).train()
    cfg = _cfg(tmp_path / 'w', record=record, resume=True)
    cfg.train_dataloader.batch_size = 2
    with pytest.raises(ResumeMismatchError, match='per-process batch size: 4 in the checkpoint, 2 now'):
        build_runner(cfg).load_or_resume()
    cfg = _cfg(tmp_path / 'w', record=record, resume=True)
    cfg.train_dataloader.dataset = dict(type='_NoisyPoints', size=24, classes=('dot',))
    with pytest.raises(
        ResumeMismatchError, match='training dataset size: 20 in the checkpoint, 24 now.*metainfo'
    ):
        build_runner(cfg).load_or_resume()
    cfg = _cfg(tmp_path / 'w', record=record, resume=True, resume_allow_mismatch=True)
    cfg.train_dataloader.batch_size = 2
    runner = build_runner(cfg)
    runner.load_or_resume()
    assert runner.iter == 2


def test_world_size_mismatch_is_named(tmp_path: Path) -> None:
    record = tmp_path / 'rec.jsonl'
    with pytest.raises(_Stop):
        build_runner(_cfg(tmp_path / 'w', record=record, stop_after=1)).train()
    ckpt = safe_load(tmp_path / 'w' / 'iter_1.pth')
    assert ckpt['meta']['world_size'] == 1
    ckpt['meta']['world_size'] = 2  # as if saved by a 2-process run
    torch.save(ckpt, tmp_path / 'two.pth')
    runner = build_runner(
        _cfg(tmp_path / 'w', record=record, resume=True, load_from=str(tmp_path / 'two.pth'))
    )
    with pytest.raises(ResumeMismatchError, match=r'world size \(processes\): 2 in the checkpoint, 1 now'):
        runner.load_or_resume()


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, 'w'))  # the side effect: creates the marker file


def test_resume_never_runs_code_from_a_checkpoint(tmp_path: Path) -> None:
    record = tmp_path / 'rec.jsonl'
    with pytest.raises(_Stop):
        build_runner(_cfg(tmp_path / 'w', record=record, stop_after=1)).train()
    ckpt = safe_load(tmp_path / 'w' / 'iter_1.pth')
    # 1. A pickle payload: refused without running it, on resume and on load_from.
    marker = tmp_path / 'pwned'
    evil = dict(ckpt, extra=_Payload(str(marker)))
    torch.save(evil, tmp_path / 'evil.pth')
    for key in ('resume', 'load'):
        cfg = _cfg(
            tmp_path / 'w', record=record, resume=key == 'resume', load_from=str(tmp_path / 'evil.pth')
        )
        with pytest.raises(UnsafeCheckpointError, match='refusing to load'):
            build_runner(cfg).load_or_resume()
        assert not marker.exists()
    # 2. A config string (MMEngine would execute meta['config'] as Python to read gpu_ids).
    ckpt['meta']['config'] = f'open({str(marker)!r}, "w")\ngpu_ids = [0, 1]'
    torch.save(ckpt, tmp_path / 'with_config.pth')
    runner = build_runner(
        _cfg(tmp_path / 'w', record=record, resume=True, load_from=str(tmp_path / 'with_config.pth'))
    )
    runner.load_or_resume()
    assert runner.iter == 1 and not marker.exists()


@pytest.mark.parametrize('action', ['error', 'skip'])
def test_nonfinite_loss_is_caught_before_the_step(tmp_path: Path, action: str) -> None:
    record = tmp_path / 'rec.jsonl'
    cfg = _cfg(tmp_path / 'w', record=record, model=dict(type='_DropoutRegressor', nan_at_iter=3))
    cfg.custom_hooks.append(dict(type='NonFiniteGuardHook', action=action))
    runner = build_runner(cfg)
    if action == 'error':
        with pytest.raises(NonFiniteLossError, match='iteration 3: loss term.s. loss_reg is NaN'):
            runner.train()
        assert runner.iter == 2
    else:
        runner.train()
        assert runner.message_hub.get_scalar('train/nonfinite_skips').current() == 1
        losses = _read(record)
        assert len(losses) == 15 and np.isnan(losses[2][1]['loss_reg'])
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())


def test_nonfinite_gradient_is_caught(tmp_path: Path) -> None:
    record = tmp_path / 'rec.jsonl'
    runner = build_runner(_cfg(tmp_path / 'w', record=record))
    runner.model.net[0].weight.register_hook(lambda g: g * float('inf') if runner.iter == 1 else g)
    with pytest.raises(NonFiniteLossError, match='iteration 2: the gradient of net.0.weight'):
        runner.train()
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())


@DATASETS.register_module(force=True)
class _HangsAt(_NoisyPoints):
    def get_data_info(self, i: int) -> dict[str, Any]:
        return dict(img_path=f'points/{i:04d}.png')

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i == 13:
            time.sleep(60)  # a read from a dead mount
        return super().__getitem__(i)


@pytest.mark.parametrize('workers', [0, 1])
def test_hung_sample_is_named(tmp_path: Path, workers: int) -> None:
    cfg = _cfg(tmp_path / 'w', record=tmp_path / 'rec.jsonl', workers=workers, sample_timeout=1.0)
    cfg.train_dataloader.dataset = dict(type='_HangsAt', size=20)
    start = time.monotonic()
    with pytest.raises(SampleTimeoutError, match=r'_HangsAt\[13\] \(points/0013.png\)'):
        build_runner(cfg).train()
    # The 1 s timeout, not the default 300 s, ended it (the bound leaves room for a loaded machine: 8 s idle,
    # 33 s once beside a training).
    assert time.monotonic() - start < 120


METHOD_CONFIGS = {
    'mammut': 'configs/mammut/mammut_vit-tiny-dec4_1xb32-30e_shapes-cap.py',
    'fiber': 'configs/fiber/fiber_swin-tiny-roberta-tiny_1xb32-30e_shapes-pretrain.py',
    'albef': 'configs/albef/albef_vit-tiny-bert-tiny_1xb32-20e_shapes.py',
    'beit3': 'configs/beit3/beit3_tiny-patch16-128_1xb32-12e_shapes-mdm.py',
}


def _method_cfg(
    method: str, data: Path, work_dir: Path, record: Path, stop_after: int | None = None
) -> Config:
    """The method's Shapes World config: 12 training images, batch 4, 2 epochs (6 iterations), a
    checkpoint every iteration, no validation."""
    from toolkit.engine import load_config

    cfg = load_config(str(Path(__file__).parents[2] / METHOD_CONFIGS[method]), work_dir=str(work_dir))
    loader = cfg.train_dataloader
    loader.update(batch_size=4, num_workers=0, persistent_workers=False)
    loader.dataset.update(data_root=f'{data}/', indices=12)
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=2, val_interval=100)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=4)]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1, by_epoch=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=50)
    cfg.custom_hooks = [
        *cfg.get('custom_hooks', []),
        dict(type='_RecordLosses', out=str(record), stop_after=stop_after),
    ]
    cfg.randomness = dict(seed=0, deterministic=True)
    cfg.log_level = 'WARNING'
    cfg.experiment_name = f'{method}-{work_dir.name}-{next(_RUN_IDS)}'
    return cfg


@pytest.fixture
def _deterministic_afterwards_off() -> Any:
    """``randomness.deterministic`` turns on ``torch.use_deterministic_algorithms`` for the process."""
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.usefixtures('_deterministic_afterwards_off')
@pytest.mark.parametrize('method', sorted(METHOD_CONFIGS))
def test_every_method_resumes_bit_exact(method: str, shapes_tiny: Path, tmp_path: Path) -> None:
    """Stopped after iteration 4 (mid-epoch 2) and resumed: every loss term of iterations 1-6 and the final
    weights (momentum models, queues and counters included) equal an uninterrupted run's. Deterministic
    algorithms are on: with more than one thread some CPU kernels (in ALBEF's backward pass) are not
    bit-reproducible even between two uninterrupted runs."""
    full_rec, part_rec = tmp_path / 'full.jsonl', tmp_path / 'part.jsonl'
    full = build_runner(_method_cfg(method, shapes_tiny, tmp_path / 'full', full_rec))
    full.train()
    with pytest.raises(_Stop):
        build_runner(_method_cfg(method, shapes_tiny, tmp_path / 'part', part_rec, stop_after=4)).train()
    cfg = _method_cfg(method, shapes_tiny, tmp_path / 'part', part_rec)
    cfg.resume = True
    resumed = build_runner(cfg)
    resumed.train()
    losses = _read(full_rec)
    assert [i for i, _ in losses] == [1, 2, 3, 4, 5, 6]
    assert _read(part_rec) == losses
    for (name, a), b in zip(_weights(full).items(), _weights(resumed).values(), strict=True):
        assert torch.equal(a, b), name


def _ddp_worker(rank: int, port: int, work_dir: str, queue: Any) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', MASTER_ADDR='127.0.0.1')
    os.environ['MASTER_PORT'] = str(port)
    import torch.distributed as dist

    try:
        from mmengine.registry import init_default_scope

        init_default_scope('toolkit')
        cfg = _cfg(Path(work_dir), record=Path(work_dir) / f'rec{rank}.jsonl', launcher='pytorch')
        cfg.model = dict(type='_DropoutRegressor', nan_at_iter=3 if rank == 1 else None)  # rank 1 only
        cfg.custom_hooks.append(dict(type='NonFiniteGuardHook', action='skip'))
        cfg.experiment_name = f'ddp-skip-{port}'  # the same on both ranks
        runner = build_runner(cfg)
        runner.train()
        weights = torch.cat([p.detach().flatten() for p in runner.model.module.parameters()])
        skips = runner.message_hub.get_scalar('train/nonfinite_skips').current()
        queue.put((rank, weights.tolist(), skips, runner.iter))
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    queue.close()
    queue.join_thread()
    os._exit(0)  # skip the interpreter's shutdown (gloo's threads can abort it)


def test_nonfinite_loss_on_one_process_skips_the_step_on_all(tmp_path: Path) -> None:
    """With DDP, a NaN on rank 1 alone makes both ranks skip the step (no backward pass anywhere, so no
    all-reduce waits for a rank that skipped); both finish with the same finite weights."""
    import socket

    import torch.multiprocessing as mp

    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    procs = [
        ctx.Process(target=_ddp_worker, args=(rank, port, str(tmp_path), queue), daemon=True)
        for rank in range(2)
    ]
    for proc in procs:
        proc.start()
    try:
        results = {r[0]: r[1:] for r in (queue.get(timeout=240) for _ in procs)}
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    (w0, skips0, it0), (w1, skips1, it1) = results[0], results[1]
    assert skips0 == skips1 == 1 and it0 == it1 == 9  # 3 epochs of 3 batches (10 samples per rank)
    assert w0 == w1 and all(np.isfinite(w0))


def test_exported_safetensors_weights_load_as_load_from(tmp_path: Path) -> None:
    from toolkit.testing.scripts import load_script

    module = load_script(Path(__file__).parents[2] / 'tools/export_weights.py')
    record = tmp_path / 'rec.jsonl'
    trained = build_runner(_cfg(tmp_path / 'w', record=record))
    trained.train()
    out = tmp_path / 'weights.safetensors'
    module.export_weights(str(tmp_path / 'w' / 'iter_15.pth'), str(out))
    fresh = build_runner(_cfg(tmp_path / 'v', record=record, load_from=str(out)))
    fresh.load_or_resume()
    for (name, a), b in zip(_weights(trained).items(), _weights(fresh).values(), strict=True):
        assert torch.equal(a, b), name


# Runs with this folder on PYTHONPATH (for `import test_resume`).
_KILL_SCRIPT = '''
import torch
from mmengine.registry import init_default_scope
init_default_scope('toolkit')
import test_resume as t
from pathlib import Path
from toolkit.registry import MODELS

@MODELS.register_module(force=True)
class _Heavy(t._DropoutRegressor):
    """A 32 MB buffer makes each save take long enough to be killed in the middle of one."""
    def __init__(self):
        super().__init__()
        self.register_buffer('ballast', torch.randn(8 * 2**20))

work = Path({work!r})
cfg = t._cfg(work, record=work / 'rec.jsonl', resume=True)
cfg.model = dict(type='_Heavy')
cfg.train_cfg = dict(by_epoch=True, max_epochs=1000)
t.build_runner(cfg).train()
'''


def test_kill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    """SIGKILL a training process at random moments (most land inside a save: each takes ~100 ms and
    follows every iteration); after each kill the newest checkpoint that verifies is loadable, resuming
    never fails, and the iteration count never goes back."""
    import signal
    import subprocess
    import sys

    work = tmp_path / 'w'
    script = tmp_path / 'train.py'
    script.write_text(_KILL_SCRIPT.format(work=str(work)))
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get('PYTHONPATH')]))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=path)
    rng = random.Random(0)
    last_iter, killed_mid_save, rounds = 0, 0, 0
    while rounds < 2 or (killed_mid_save == 0 and rounds < 8):  # until one kill landed inside a save
        rounds += 1
        proc = subprocess.Popen([sys.executable, str(script)], env=env, cwd=Path(__file__).parents[2],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + 120
        while not list(work.glob('*.pth')) or time.monotonic() < start_after(work, last_iter):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ''
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_mid_save += bool(list(work.glob('.*.tmp')))  # a save's temporary file was left behind
        runner = build_runner(_cfg(work, record=work / 'rec.jsonl', resume=True))
        path = runner.find_resumable_checkpoint()
        assert path is not None and verify_checkpoint(path) is None
        ckpt = safe_load(path)
        assert ckpt['meta']['iter'] >= last_iter
        last_iter = ckpt['meta']['iter']
    assert last_iter > 0 and killed_mid_save >= 1


def start_after(work: Path, last_iter: int) -> float:
    """The moment to start the random wait: once the run has saved past the previous round's checkpoint."""
    iters = [int(p.stem.split('_')[1]) for p in work.glob('iter_*.pth')]
    return 0.0 if max(iters, default=0) > last_iter else float('inf')
