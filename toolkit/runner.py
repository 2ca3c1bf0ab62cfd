"""The toolkit's Runner: MMEngine's, made safe to stop, crash and resume.

:class:`ToolkitRunner` adds to ``mmengine.runner.Runner``:

* **Exact resume** (:mod:`toolkit.resume`): the training loader gets a :class:`ResumableBatchSampler` and a
  :class:`SeededDataset`, the loops become their resumable variants, and random states travel in the
  checkpoint (:class:`toolkit.hooks.ExactResumeHook`). N iterations, a stop and N more give the losses and
  weights of 2N iterations in one go, mid-epoch or at an epoch boundary.
* **Atomic, verified checkpoints**: a checkpoint is written to a temporary file, its size and SHA-256 are
  recorded beside it, and it is renamed into place (with :class:`toolkit.hooks.AtomicCheckpointHook`, old
  ones are pruned only afterwards). ``--resume`` without a path takes the newest checkpoint that verifies
  and warns about any newer one that does not (truncated, corrupted, unrecorded).
* **Refused mismatches**: resuming with another world size, per-process batch size, dataset size or
  dataset metainfo raises :class:`ResumeMismatchError` naming each difference, unless the config sets
  ``resume_allow_mismatch = True`` (``tools/train.py --resume-allow-mismatch``).
* **No code from checkpoints**: a config string stored in a checkpoint is dropped unread (MMEngine would
  execute a ``meta['config']`` as Python to read ``gpu_ids``); loading is ``weights_only``
  (:mod:`toolkit.checkpoint`).
"""

from __future__ import annotations

import copy
import glob
import json
import os
import os.path as osp
from typing import Any

from mmengine.dist import master_only
from mmengine.runner import Runner
from mmengine.runner.checkpoint import find_latest_checkpoint
from torch.utils.data import DataLoader

from toolkit.checkpoint import (
    UnsafeCheckpointError,
    atomic_replace,
    to_plain,
    verify_checkpoint,
    write_checkpoint_record,
)
from toolkit.skips import set_ledger

__all__ = ['ResumeMismatchError', 'ToolkitRunner']

# Seconds one training sample may take before it is reported as hung (config: ``sample_timeout``).
DEFAULT_SAMPLE_TIMEOUT = 300.0

_RESUMABLE_LOOPS = {
    'EpochBasedTrainLoop': 'ResumableEpochBasedTrainLoop',
    'IterBasedTrainLoop': 'ResumableIterBasedTrainLoop',
}


class ResumeMismatchError(RuntimeError):
    """The run being resumed differs from the checkpoint's in a way that changes what training does."""


def _canonical(value: Any) -> str:
    return json.dumps(to_plain(value), sort_keys=True, default=str)


class ToolkitRunner(Runner):
    """``mmengine.runner.Runner`` with exact resume, atomic verified checkpoints and resume checks.

    Built like MMEngine's Runner (``ToolkitRunner.from_cfg(cfg)``); extra config keys:
    ``resume_allow_mismatch`` (bool, default False) and ``sample_timeout`` (seconds one training sample
    may take before :class:`toolkit.watchdog.SampleTimeoutError` names it; default 300, None: no limit).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_allow_mismatch = bool(self.cfg.get('resume_allow_mismatch', False))
        self.pending_rng_state: dict[str, Any] | None = None
        self._resuming = False
        # Before any data loader starts, so that its worker processes inherit the ledger's path.
        set_ledger(osp.join(self.work_dir, 'skipped_samples.jsonl'))

    # ------------------------------------------------------------------------------------------------------
    # Training loop and loader
    # ------------------------------------------------------------------------------------------------------

    def build_train_loop(self, loop: Any) -> Any:
        if isinstance(loop, dict):
            loop = copy.deepcopy(loop)
            if 'type' not in loop:
                loop['type'] = 'EpochBasedTrainLoop' if loop.pop('by_epoch', True) else 'IterBasedTrainLoop'
            if isinstance(loop['type'], str):
                loop['type'] = _RESUMABLE_LOOPS.get(loop['type'], loop['type'])
            self._train_dataloader: Any = self._resumable_loader_cfg(self._train_dataloader)
        built = super().build_train_loop(loop)
        loader = getattr(built, 'dataloader', None)
        if isinstance(loader, DataLoader):
            import torch

            # Starting a loader iterator draws a base seed; from its own generator, not the training's.
            loader.generator = torch.Generator().manual_seed(self.seed or 0)
        return built

    def _resumable_loader_cfg(self, cfg: Any) -> Any:
        if not isinstance(cfg, dict) or cfg.get('sampler') is None:  # a built loader, or an iterable dataset
            return cfg
        cfg = copy.copy(cfg)
        batch_sampler = cfg.pop('batch_sampler', None)
        if isinstance(batch_sampler, dict) and batch_sampler.get('type') == 'ResumableBatchSampler':
            return cfg
        cfg['batch_sampler'] = dict(
            type='ResumableBatchSampler',
            batch_sampler=batch_sampler,
            drop_last=cfg.pop('drop_last', False),
            seed=self.seed or 0,
            rank=self.rank,
        )
        timeout = self.cfg.get('sample_timeout', DEFAULT_SAMPLE_TIMEOUT)
        cfg['dataset'] = dict(type='SeededDataset', dataset=cfg['dataset'], sample_timeout=timeout)
        return cfg

    def _setup(self) -> dict[str, int | None]:
        """What a resumed run must share with the checkpoint's (saved in its meta, compared on resume)."""
        return dict(
            world_size=self.world_size,
            train_batch_size=self._train_batch_size(),
            train_dataset_size=self._train_dataset_size(),
        )

    def _train_batch_size(self) -> int | None:
        loader = self.train_dataloader
        return loader.batch_size or getattr(loader.batch_sampler, 'batch_size', None)

    def _train_dataset_size(self) -> int | None:
        try:
            return len(self.train_dataloader.dataset)
        except TypeError:  # an iterable dataset without a length
            return None

    # ------------------------------------------------------------------------------------------------------
    # Saving
    # ------------------------------------------------------------------------------------------------------

    @master_only  # type: ignore[untyped-decorator]
    def save_checkpoint(
        self,
        out_dir: str,
        filename: str,
        file_client_args: dict[str, Any] | None = None,
        save_optimizer: bool = True,
        save_param_scheduler: bool = True,
        meta: dict[str, Any] | None = None,
        by_epoch: bool = True,
        backend_args: dict[str, Any] | None = None,
    ) -> None:
        """MMEngine's save, through a temporary file that is recorded (size, SHA-256) and renamed."""
        meta = dict(meta or {}, **self._setup())
        local = file_client_args is None and backend_args is None and '://' not in out_dir
        if not local:  # object stores have their own atomic puts
            super().save_checkpoint(
                out_dir,
                filename,
                file_client_args,
                save_optimizer,
                save_param_scheduler,
                meta,
                by_epoch,
                backend_args,
            )
            return
        tmp_name = f'.{filename}.{os.getpid()}.tmp'
        tmp_path, final_path = osp.join(out_dir, tmp_name), osp.join(out_dir, filename)
        try:
            super().save_checkpoint(
                out_dir, tmp_name, None, save_optimizer, save_param_scheduler, meta, by_epoch, None
            )
            epoch, iteration = (self.epoch + 1, self.iter) if by_epoch else (self.epoch, self.iter + 1)
            # The record first: a rename that happened always has its record; a record whose file is
            # missing or older fails verification.
            write_checkpoint_record(tmp_path, record_for=final_path, epoch=epoch, iter=iteration)
            atomic_replace(tmp_path, final_path)
        finally:
            if osp.exists(tmp_path):
                os.remove(tmp_path)

    # ------------------------------------------------------------------------------------------------------
    # Loading and resuming
    # ------------------------------------------------------------------------------------------------------

    def load_or_resume(self) -> None:
        if self._has_loaded:  # type: ignore[has-type]
            return None
        if self._resume and self._load_from is None:
            path = self.find_resumable_checkpoint()
            if path is None:
                self.logger.info(f'No checkpoint to resume from in {self.work_dir}: training from scratch.')
        elif self._resume:
            path = self._load_from
            reason = verify_checkpoint(path)
            if reason is not None and 'has no record' in reason:
                self.logger.warning(f'Resuming from an unverified checkpoint: {reason}.')
            elif reason is not None:
                raise UnsafeCheckpointError(f'cannot resume: {reason}')
        else:
            path = None
        if path is not None:
            self.resume(path)
            self._has_loaded = True
        elif self._load_from is not None and not self._resume:
            self.load_checkpoint(self._load_from)
            self._has_loaded = True

    def find_resumable_checkpoint(self) -> str | None:
        """The newest checkpoint in the work dir whose size and hash match its record.

        Newer checkpoints that fail verification are named in a warning. Without any recorded checkpoint,
        MMEngine's ``last_checkpoint`` pointer is followed (unverified, with a warning).
        """
        records = []
        for record_path in glob.glob(osp.join(self.work_dir, '*.record.json')):
            try:
                with open(record_path) as f:
                    record = json.load(f)
                records.append((int(record.get('iter', -1)), osp.getmtime(record_path), record_path))
            except (OSError, ValueError, TypeError):
                self.logger.warning(f'Ignoring the unreadable checkpoint record {record_path}.')
        rejected: list[str] = []
        for _, _, record_path in sorted(records, reverse=True):
            path = record_path[: -len('.record.json')]
            reason = verify_checkpoint(path)
            if reason is None:
                if rejected:
                    self.logger.warning(
                        f'Skipping {len(rejected)} unusable checkpoint(s): {"; ".join(rejected)}. '
                        f'Resuming from the previous good one, {path}.'
                    )
                self.logger.info(f'Resuming from {path} (size and SHA-256 verified).')
                return path
            rejected.append(reason)
        if rejected:
            raise UnsafeCheckpointError(f'no usable checkpoint in {self.work_dir}: {"; ".join(rejected)}')
        latest = find_latest_checkpoint(self.work_dir)
        if latest is not None:
            self.logger.warning(
                f'Resuming from {latest}, which has no size/hash record to verify it against.'
            )
        return latest

    def resume(self, filename: str, *args: Any, **kwargs: Any) -> None:
        self._resuming = True
        try:
            super().resume(filename, *args, **kwargs)
        finally:
            self._resuming = False

    def load_checkpoint(self, filename: str, *args: Any, **kwargs: Any) -> Any:
        checkpoint = super().load_checkpoint(filename, *args, **kwargs)
        meta = checkpoint.get('meta')
        if isinstance(meta, dict):
            # A config is Python source: never parse one that came inside a checkpoint.
            meta.pop('config', None)
            meta.pop('cfg', None)
        if self._resuming:
            self._check_resumable(filename, meta if isinstance(meta, dict) else {})
            self.pending_rng_state = checkpoint.get('rng_state')
            if self.pending_rng_state is None:
                self.logger.warning(f'{filename} holds no random state: the resumed run will not be exact.')
        return checkpoint

    def _check_resumable(self, filename: str, meta: dict[str, Any]) -> None:
        current = self._setup()
        labels = dict(
            world_size='world size (processes)',
            train_batch_size='per-process batch size',
            train_dataset_size='training dataset size',
        )
        mismatches = [
            f'{labels[key]}: {meta[key]} in the checkpoint, {value} now'
            for key, value in current.items()
            if meta.get(key) is not None and meta[key] != value
        ]
        dataset_meta = getattr(self.train_dataloader.dataset, 'metainfo', None)
        if 'dataset_meta' in meta and _canonical(meta['dataset_meta']) != _canonical(dataset_meta):
            mismatches.append('dataset metainfo (classes or other metadata) differs from the checkpoint')
        if not mismatches:
            return
        message = f'resuming from {filename} with a different setup: ' + '; '.join(mismatches)
        if not self.resume_allow_mismatch:
            raise ResumeMismatchError(
                message + '. Resume with the same setup, or allow it explicitly with --resume-allow-mismatch '
                '(config: resume_allow_mismatch = True); the resumed run will then not repeat the data order.'
            )
        self.logger.warning(message + ' (allowed by resume_allow_mismatch).')
