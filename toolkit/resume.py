"""Exact resume: the data stream and the random state of a resumed run are those of an uninterrupted one.

MMEngine restores weights, optimizer, schedulers and the iteration count, but not where the data loader
was inside an epoch nor any random state: its epoch loop restarts the epoch from the beginning, and its
iteration loop re-reads every trained batch to skip it. Three pieces close the gap:

* **Per-sample seeding.** :class:`ResumableBatchSampler` tags every index with a seed derived from
  ``(seed, epoch, rank, batch, position)`` (:class:`SeededIndex`); :class:`SeededDataset` seeds Python's,
  NumPy's and torch's generators from it around the pipeline call and restores the caller's state after.
  A sample's augmentation then depends on where it sits in the stream, not on which data-loader worker
  draws it or how much that worker drew before, so no worker state needs saving.
* **Sampler position.** The resumable loops (:class:`ResumableEpochBasedTrainLoop`,
  :class:`ResumableIterBasedTrainLoop`) tell the batch sampler to pass over the batches already trained
  (indices only; no sample is loaded) and continue the epoch where the checkpoint was taken.
* **Main-process random state.** :func:`capture_rng_state` / :func:`restore_rng_state` save and restore
  Python, NumPy, torch CPU (and CUDA) generators; :class:`toolkit.hooks.ExactResumeHook` stores them in the
  checkpoint and re-applies them just before the first resumed iteration.

The toolkit's runner (:class:`toolkit.runner.ToolkitRunner`) installs all of this for the training loader.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from mmengine.dataset import InfiniteSampler
from mmengine.logging import print_log
from mmengine.runner.loops import EpochBasedTrainLoop, IterBasedTrainLoop, _InfiniteDataloaderIterator
from torch.utils.data import BatchSampler, Dataset, Sampler

from toolkit.registry import DATA_SAMPLERS, DATASETS, LOOPS
from toolkit.watchdog import sample_deadline

__all__ = [
    'ResumableBatchSampler',
    'ResumableEpochBasedTrainLoop',
    'ResumableIterBasedTrainLoop',
    'SeededDataset',
    'SeededIndex',
    'capture_rng_state',
    'restore_rng_state',
    'sample_seed',
]


# ----------------------------------------------------------------------------------------------------------
# Random state
# ----------------------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (when initialised) CUDA generator states, as plain data and tensors.

    The result loads with ``torch.load(weights_only=True)``: NumPy's key array travels as a tensor.
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = dict(
        python=dict(version=version, internal=list(internal), gauss=gauss),
        numpy=dict(
            name=name,
            keys=torch.from_numpy(np.asarray(keys).astype(np.int64)),
            pos=int(pos),
            has_gauss=int(has_gauss),
            cached=float(cached),
        ),
        torch=torch.get_rng_state(),
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state['python']
    random.setstate((py['version'], tuple(py['internal']), py['gauss']))
    npy = state['numpy']
    keys = npy['keys'].numpy().astype(np.uint32)
    np.random.set_state((npy['name'], keys, npy['pos'], npy['has_gauss'], npy['cached']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


@contextlib.contextmanager
def forked_rng() -> Iterator[None]:
    """Run the body with its own Python / NumPy / torch CPU random state; the caller's comes back after."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)


def sample_seed(seed: int, epoch: int, rank: int, batch: int, position: int) -> int:
    """A 32-bit seed for one sample slot of the stream (NumPy's ``SeedSequence`` mixes the five numbers)."""
    words = [int(seed) & 0xFFFFFFFF, int(epoch), int(rank), int(batch), int(position)]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------------------
# Sampling and seeding
# ----------------------------------------------------------------------------------------------------------


class SeededIndex(int):
    """A dataset index that carries the seed of its sample (an ``int`` everywhere else)."""

    seed: int

    def __new__(cls, index: int, seed: int) -> SeededIndex:
        obj = super().__new__(cls, index)
        obj.seed = seed
        return obj

    def __reduce__(self) -> tuple[Any, ...]:  # travels to data-loader workers through pickle
        return (SeededIndex, (int(self), self.seed))


@DATA_SAMPLERS.register_module()
class ResumableBatchSampler(BatchSampler):
    """Wrap a batch sampler: seed every index and, once after a resume, pass over trained batches.

    Args:
        sampler: the index sampler (e.g. MMEngine's ``DefaultSampler``).
        batch_size: samples per batch.
        drop_last: as in ``torch.utils.data.BatchSampler`` (used when ``batch_sampler`` is None).
        batch_sampler: config of the wrapped batch sampler (e.g. ``GroupBySourceBatchSampler``); None for
            PyTorch's plain ``BatchSampler``.
        seed: the run's seed; the per-sample seeds derive from it.
        rank: this process's rank (part of every sample seed, so ranks draw different augmentations).
    """

    def __init__(
        self,
        sampler: Sampler[int],
        batch_size: int,
        drop_last: bool = False,
        batch_sampler: dict[str, Any] | None = None,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        if batch_sampler is None:
            self.inner: Any = BatchSampler(sampler, batch_size, drop_last)
        else:
            self.inner = DATA_SAMPLERS.build(
                dict(batch_sampler), default_args=dict(sampler=sampler, batch_size=batch_size)
            )
        self.seed, self.rank = seed, rank
        self._epoch = 0  # used when the sampler keeps no epoch of its own
        self._skip = 0

    @property
    def epoch(self) -> int:
        return int(getattr(self.sampler, 'epoch', self._epoch))

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        for target in (self.sampler, self.inner):
            setter = getattr(target, 'set_epoch', None)
            if setter is not None:
                setter(epoch)

    def skip_batches(self, num_batches: int) -> None:
        """The next pass starts after its first ``num_batches`` batches (indices drawn, no sample loaded)."""
        if num_batches < 0:
            raise ValueError(f'cannot skip a negative number of batches ({num_batches})')
        self._skip = num_batches

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        epoch = self.epoch
        if isinstance(self.sampler, InfiniteSampler):
            # MMEngine's InfiniteSampler keeps ONE index generator for its lifetime; closing an abandoned
            # pass over it (a replaced loader iterator) would close that generator for every later pass.
            # Each pass gets a fresh stream from the start instead (the same indices: same seed).
            self.sampler.indices = self.sampler._indices_of_rank()
        for b, batch in enumerate(self.inner):
            if b < skip:
                continue
            yield [
                SeededIndex(i, sample_seed(self.seed, epoch, self.rank, b, j)) for j, i in enumerate(batch)
            ]

    def __len__(self) -> int:
        return len(self.inner)


@DATASETS.register_module()
class SeededDataset(Dataset[Any]):
    """Seed the random generators from the index's seed around each ``__getitem__`` of ``dataset``, under
    a deadline.

    In a data-loader worker the generators are simply re-seeded; in the main process (``num_workers=0``)
    the caller's random state is saved and restored, so loading data never moves the training's random
    stream. A sample that takes longer than ``sample_timeout`` raises
    :class:`toolkit.watchdog.SampleTimeoutError` naming the dataset, the index and the file. Every other
    attribute is the wrapped dataset's.

    Args:
        dataset: the dataset, or its config.
        sample_timeout: seconds one sample may take (None: no deadline).
    """

    def __init__(self, dataset: Dataset[Any] | dict[str, Any], sample_timeout: float | None = None) -> None:
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        self.sample_timeout = sample_timeout

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def describe(self, index: int) -> str:
        """``'CocoDataset[12] (data/coco/train2017/000000000139.jpg)'``: what a timeout message names."""
        name = f'{type(self.dataset).__name__}[{int(index)}]'
        get_info = getattr(self.dataset, 'get_data_info', None)
        if get_info is None:
            return name
        info = get_info(int(index))
        files = [str(info[k]) for k in ('img_path', 'video_path', 'file_name') if info.get(k)]
        return f'{name} ({", ".join(files)})' if files else name

    def __getitem__(self, index: int) -> Any:
        seed = getattr(index, 'seed', None)
        with sample_deadline(self.sample_timeout, lambda: self.describe(index)):
            if seed is None:
                return self.dataset[index]
            in_worker = torch.utils.data.get_worker_info() is not None
            with contextlib.nullcontext() if in_worker else forked_rng():
                random.seed(seed)
                np.random.seed(seed)
                torch.manual_seed(seed) if in_worker else torch.default_generator.manual_seed(seed)
                return self.dataset[int(index)]

    def __getattr__(self, name: str) -> Any:
        if name == 'dataset':  # not set yet (e.g. while unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.dataset!r})'


# ----------------------------------------------------------------------------------------------------------
# Loops
# ----------------------------------------------------------------------------------------------------------


def _batch_sampler(loop: Any) -> ResumableBatchSampler | None:
    batch_sampler = getattr(loop.dataloader, 'batch_sampler', None)
    return batch_sampler if isinstance(batch_sampler, ResumableBatchSampler) else None


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` that resumes in the middle of an epoch where the checkpoint was taken."""

    def run_epoch(self) -> None:
        start = self._iter - self._epoch * len(self.dataloader)
        batch_sampler = _batch_sampler(self)
        if start > 0 and batch_sampler is not None:
            start = min(start, len(self.dataloader))
            batch_sampler.skip_batches(start)
            print_log(
                f'Resuming epoch {self._epoch + 1} at batch {start + 1} of {len(self.dataloader)}',
                logger='current',
            )
        else:
            start = 0
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        for idx, data_batch in enumerate(self.dataloader, start=start):
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1


@LOOPS.register_module()
class ResumableIterBasedTrainLoop(IterBasedTrainLoop):
    """``IterBasedTrainLoop`` that skips trained batches by index instead of loading them again."""

    def run(self) -> None:
        batch_sampler = _batch_sampler(self)
        if self._iter == 0 or batch_sampler is None:
            return super().run()
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')  # (sets the sampler's epoch to 0: set ours after it)
        if isinstance(batch_sampler.sampler, InfiniteSampler):
            epoch, skip = 0, self._iter  # one endless epoch
        else:
            epoch, skip = divmod(self._iter, len(self.dataloader))
        batch_sampler.set_epoch(epoch)
        batch_sampler.skip_batches(skip)
        self.dataloader_iterator = _InfiniteDataloaderIterator(self.dataloader)
        self.dataloader_iterator._epoch = epoch
        print_log(
            f'Resuming at iteration {self._iter + 1} (epoch {epoch}, batch {skip + 1})', logger='current'
        )
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            data_batch = next(self.dataloader_iterator)
            self.run_iter(data_batch)
            self._decide_current_val_interval()
            if (
                self.runner.val_loop is not None
                and self._iter >= self.val_begin
                and (self._iter % self.val_interval == 0 or self._iter == self._max_iters)
            ):
                self.runner.val_loop.run()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
