"""Runner hooks shared by every method: safe and atomic checkpoints, exact resume, a guard against
non-finite losses, the skipped-sample report and a loss-curve plot."""

from __future__ import annotations

import collections
import glob
import json
import math
import os
import os.path as osp
from typing import Any

import torch
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.model import is_model_wrapper

from toolkit.checkpoint import (
    atomic_write_text,
    checkpoint_record_path,
    from_plain,
    install_safe_loader,
    to_plain,
)
from toolkit.registry import HOOKS
from toolkit.resume import capture_rng_state, restore_rng_state
from toolkit.skips import LEDGER_ENV, summarize_ledger

__all__ = [
    'AtomicCheckpointHook',
    'ExactResumeHook',
    'LossCurveHook',
    'NonFiniteGuardHook',
    'SafeCheckpointHook',
    'SkipLedgerHook',
]


@HOOKS.register_module()
class SafeCheckpointHook(Hook):
    """Keep checkpoints loadable with ``weights_only=True``.

    Before a save, the message hub and meta are turned into plain data; after a
    load, history buffers are restored. Building the hook also routes MMEngine's
    local checkpoint loading through :func:`toolkit.checkpoint.safe_load`.
    """

    priority = 'VERY_LOW'  # run after hooks that add to the checkpoint

    def __init__(self) -> None:
        install_safe_loader()

    def before_save_checkpoint(self, runner: Any, checkpoint: dict[str, Any]) -> None:
        for key in ('meta', 'message_hub'):
            if key in checkpoint:
                checkpoint[key] = to_plain(checkpoint[key])

    def after_load_checkpoint(self, runner: Any, checkpoint: dict[str, Any]) -> None:
        if 'message_hub' in checkpoint:
            checkpoint['message_hub'] = from_plain(checkpoint['message_hub'])


@HOOKS.register_module()
class LossCurveHook(Hook):
    """Plot every logged ``loss*`` scalar against the iteration to ``WORK_DIR/loss_curve.png``.

    Args:
        interval: Record every ``interval`` training iterations.
        filename: Name of the PNG written in the work dir (a JSON of the points goes beside it).
    """

    priority = 'LOW'

    def __init__(self, *, interval: int = 10, filename: str = 'loss_curve.png') -> None:
        self.interval = interval
        self.filename = filename
        self.points: dict[str, list[tuple[int, float]]] = {}

    def before_train(self, runner: Any) -> None:
        # A resumed run continues the curve of the run it resumes (points up to the resumed iteration).
        path = os.path.join(runner.work_dir, os.path.splitext(self.filename)[0] + '.json')
        if getattr(runner, '_resume', False) and os.path.isfile(path):
            with open(path) as f:
                saved = json.load(f)
            self.points = {
                k: [(int(i), float(v)) for i, v in pts if i <= runner.iter] for k, pts in saved.items()
            }

    def after_train_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        step = runner.iter + 1
        if not outputs or (step % self.interval and step != 1):
            return
        for key, value in outputs.items():
            if 'loss' in key:
                value = value.detach().item() if hasattr(value, 'detach') else float(value)
                self.points.setdefault(key, []).append((step, value))

    def after_train(self, runner: Any) -> None:
        if not self.points or runner.rank != 0:
            return
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for key, pts in sorted(self.points.items()):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key)
        ax.set_xlabel('iteration')
        ax.set_ylabel('loss')
        ax.set_yscale('log')
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(runner.work_dir, self.filename)
        fig.savefig(path)
        plt.close(fig)
        with open(os.path.splitext(path)[0] + '.json', 'w') as f:
            json.dump(self.points, f)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """MMEngine's ``CheckpointHook`` with crash-safe ordering.

    MMEngine deletes the oldest checkpoint *before* saving the new one and writes ``last_checkpoint`` in
    place, so a process killed during a save can leave no loadable checkpoint. Here the new checkpoint is
    written completely (the toolkit runner saves through a temporary file, records its size and SHA-256,
    then renames it), the ``last_checkpoint`` pointer is replaced atomically, and only then are
    checkpoints beyond ``max_keep_ckpts`` deleted (with their records). Arguments are ``CheckpointHook``'s.
    """

    def before_train(self, runner: Any) -> None:
        super().before_train(runner)
        # MMEngine's deque has maxlen=max_keep_ckpts and forgets the oldest id on append, before the
        # new file exists; ours is unbounded and trimmed after the save.
        self.keep_ckpt_ids: collections.deque[int] = collections.deque(getattr(self, 'keep_ckpt_ids', ()))
        if is_main_process() and osp.isdir(self.out_dir):
            for record in glob.glob(
                osp.join(self.out_dir, '*.record.json')
            ):  # of checkpoints pruned elsewhere
                if not osp.exists(record[: -len('.record.json')]):
                    os.remove(record)
            for tmp in glob.glob(osp.join(self.out_dir, '.*.tmp')):  # saves of a killed process
                os.remove(tmp)

    def _save_checkpoint_with_step(self, runner: Any, step: int, meta: dict[str, Any]) -> None:
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        keep = self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step)
        if keep:
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args,
        )
        if not is_main_process():
            return
        atomic_write_text(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        while self.max_keep_ckpts > 0 and len(self.keep_ckpt_ids) > self.max_keep_ckpts:
            old = self.file_backend.join_path(
                self.out_dir, self.filename_tmpl.format(self.keep_ckpt_ids.popleft())
            )
            for path in (old, checkpoint_record_path(old)):
                if self.file_backend.isfile(path):
                    self.file_backend.remove(path)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """Save the main process's random state with each checkpoint and re-apply it on resume.

    The state is captured at save time (after the iteration that the checkpoint closes) and restored just
    before the first resumed iteration, after the data loader has started: loading data does not touch
    this state (see :mod:`toolkit.resume`), so the resumed iteration draws the same dropout masks, MLM
    masks and hard negatives as the uninterrupted run. Validation runs inside a saved-and-restored
    random state, so evaluating during training does not change what training draws next.
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._val_state: dict[str, Any] | None = None

    def before_save_checkpoint(self, runner: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint['rng_state'] = capture_rng_state()

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        state = getattr(runner, 'pending_rng_state', None)
        if state is not None:
            restore_rng_state(state)
            runner.pending_rng_state = None

    def before_val(self, runner: Any) -> None:
        self._val_state = capture_rng_state()

    def after_val(self, runner: Any) -> None:
        if self._val_state is not None:
            restore_rng_state(self._val_state)
            self._val_state = None


class NonFiniteLossError(FloatingPointError):
    """A loss term or gradient is NaN or infinite; the message names the iteration and the term."""


@HOOKS.register_module()
class NonFiniteGuardHook(Hook):
    """Catch NaN/inf loss terms (and gradients) before the optimizer step; weights stay finite.

    Every loss term is checked after the forward pass and, when ``check_grads``, the gradients after the
    backward pass (skipped for ``AmpOptimWrapper``, whose loss scaler already skips overflowing steps).
    In distributed training the verdict is agreed across processes so all of them skip together.

    Args:
        action: ``'error'`` stops training with :class:`NonFiniteLossError` naming the iteration and the
            term; ``'skip'`` drops the step (no backward pass, no optimizer update), warns, and counts it
            (``train/nonfinite_skips`` in the log).
        check_grads: also check gradients before each optimizer step.
        max_skips: with ``'skip'``, stop with an error after this many skipped steps (None: never).
    """

    priority = 'VERY_HIGH'

    def __init__(self, action: str = 'error', check_grads: bool = True, max_skips: int | None = None) -> None:
        if action not in ('error', 'skip'):
            raise ValueError(f"action must be 'error' or 'skip', got {action!r}")
        self.action, self.check_grads, self.max_skips = action, check_grads, max_skips
        self.num_skipped = 0
        self._bad: list[str] = []
        self._runner: Any = None

    def before_train(self, runner: Any) -> None:
        self._runner = runner
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        parse_losses = model.parse_losses

        def guarded_parse_losses(losses: dict[str, Any]) -> Any:
            self._bad = self._nonfinite_terms(losses)
            return parse_losses(losses)

        model.parse_losses = guarded_parse_losses
        for wrapper in self._optim_wrappers(runner.optim_wrapper):
            self._guard(wrapper)

    @staticmethod
    def _optim_wrappers(optim_wrapper: Any) -> list[Any]:
        inner = getattr(optim_wrapper, 'optim_wrappers', None)  # OptimWrapperDict
        return list(inner.values()) if isinstance(inner, dict) else [optim_wrapper]

    @staticmethod
    def _nonfinite_terms(losses: dict[str, Any]) -> list[str]:
        bad = []
        for name, value in losses.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(
                isinstance(v, torch.Tensor) and not bool(torch.isfinite(v.detach()).all()) for v in values
            ):
                bad.append(name)
            elif any(isinstance(v, float) and not math.isfinite(v) for v in values):
                bad.append(name)
        return bad

    def _agreed(self, local_bad: bool) -> bool:
        if get_world_size() == 1:
            return local_bad
        flag = torch.tensor([1.0 if local_bad else 0.0])
        all_reduce(flag)
        return bool(flag.item() > 0)

    def _handle(self, what: str) -> None:
        runner = self._runner
        iteration = runner.iter + 1
        if self.action == 'error':
            raise NonFiniteLossError(
                f'iteration {iteration}: {what} is NaN or infinite; training stopped before the optimizer '
                f'step, so the weights are finite (set NonFiniteGuardHook(action="skip") to skip such steps)'
            )
        self.num_skipped += 1
        runner.message_hub.update_scalar('train/nonfinite_skips', self.num_skipped)
        runner.logger.warning(
            f'iteration {iteration}: {what} is NaN or infinite; step skipped ({self.num_skipped} so far)'
        )
        if self.max_skips is not None and self.num_skipped > self.max_skips:
            raise NonFiniteLossError(
                f'iteration {iteration}: more than {self.max_skips} non-finite steps skipped'
            )

    def _guard(self, wrapper: Any) -> None:
        update_params, step = wrapper.update_params, wrapper.step
        amp = type(wrapper).__name__ == 'AmpOptimWrapper'

        def guarded_update_params(loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            bad = self._bad or ([] if bool(torch.isfinite(loss.detach()).all()) else ['the total loss'])
            self._bad = []
            if self._agreed(bool(bad)):
                wrapper.zero_grad()
                self._handle('loss term(s) ' + ', '.join(bad) if bad else 'a loss term on another process')
                return
            update_params(loss, *args, **kwargs)

        def guarded_step(**kwargs: Any) -> None:
            if self.check_grads and not amp:
                bad = [
                    n
                    for n, p in self._named_params(wrapper)
                    if p.grad is not None and not bool(torch.isfinite(p.grad).all())
                ]
                if self._agreed(bool(bad)):
                    wrapper.zero_grad()
                    self._handle(
                        f'the gradient of {", ".join(bad[:3])}' + (' and others' if len(bad) > 3 else '')
                    )
                    return
            step(**kwargs)

        wrapper.update_params = guarded_update_params
        wrapper.step = guarded_step

    def _named_params(self, wrapper: Any) -> list[tuple[str, torch.Tensor]]:
        model = self._runner.model.module if is_model_wrapper(self._runner.model) else self._runner.model
        names = {id(p): n for n, p in model.named_parameters()}
        params = [p for group in wrapper.optimizer.param_groups for p in group['params']]
        return [(names.get(id(p), '?'), p) for p in params]


@HOOKS.register_module()
class SkipLedgerHook(Hook):
    """Report the samples skipped by ``skip`` policies (see :mod:`toolkit.skips`) after each epoch and run.

    The totals (all processes, all data-loader workers) go to the log and to the message hub as
    ``skipped_samples`` (``{kind: count}``); the ledger file lists every skipped file and why.
    """

    priority = 'LOW'

    def _report(self, runner: Any, when: str) -> None:
        path = os.environ.get(LEDGER_ENV)
        counts = summarize_ledger(path) if path else {}
        runner.message_hub.update_info('skipped_samples', counts)
        if counts and is_main_process():
            total = sum(counts.values())
            detail = ', '.join(f'{n} {kind}' for kind, n in sorted(counts.items()))
            runner.logger.warning(f'{when}: {total} sample(s) skipped so far ({detail}); see {path}')

    def after_train_epoch(self, runner: Any) -> None:
        self._report(runner, f'epoch {runner.epoch + 1}')

    def after_train(self, runner: Any) -> None:
        self._report(runner, 'training done')

    def after_test(self, runner: Any) -> None:
        self._report(runner, 'test done')
