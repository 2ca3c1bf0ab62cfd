"""Runner hooks shared by every method: safe checkpoints and a loss-curve plot."""

from __future__ import annotations

import json
import os
from typing import Any

from mmengine.hooks import Hook

from toolkit.checkpoint import from_plain, install_safe_loader, to_plain
from toolkit.registry import HOOKS

__all__ = ['LossCurveHook', 'SafeCheckpointHook']


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
