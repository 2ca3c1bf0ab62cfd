"""What ``tools/train.py`` and ``tools/test.py`` share: config preparation and the Runner."""

from __future__ import annotations

import json
import os
import os.path as osp
from collections.abc import Mapping
from typing import Any

import torch
from mmengine.config import Config

import toolkit.registry  # noqa: F401  (creates the toolkit-scoped child registries)
from toolkit.checkpoint import install_safe_loader
from toolkit.runner import ToolkitRunner

__all__ = ['build_runner', 'flatten_metrics', 'load_config', 'write_metrics']


def load_config(
    path: str,
    *,
    work_dir: str | None = None,
    cfg_options: Mapping[str, Any] | None = None,
    launcher: str = 'none',
    amp: bool = False,
) -> Config:
    """Read a config, apply ``--cfg-options`` and pick the work dir (CLI > config > file name)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config {path} does not exist')
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    if not torch.cuda.is_available() and cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend') == 'nccl':
        cfg.env_cfg.dist_cfg.backend = 'gloo'  # NCCL needs CUDA; gloo runs distributed training on CPU
    if amp:
        if torch.cuda.is_available():
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
        else:  # MMEngine's AmpOptimWrapper requires an accelerator.
            cfg.optim_wrapper.type = 'BF16AutocastOptimWrapper'
    return cfg


def build_runner(cfg: Config) -> Any:
    """Build the toolkit's Runner (:class:`toolkit.runner.ToolkitRunner`) with its hooks in place.

    Added unless the config has them: ``SafeCheckpointHook`` (weights-only loadable checkpoints),
    ``ExactResumeHook`` (random state in checkpoints), ``NonFiniteGuardHook`` (``action='error'``: a NaN or
    inf loss stops training before the optimizer step), ``SkipLedgerHook`` (skipped-sample report); MMEngine's
    ``CheckpointHook`` becomes ``AtomicCheckpointHook`` (same arguments).
    """
    install_safe_loader()
    hooks = list(cfg.get('custom_hooks', []) or [])
    for name in ('SafeCheckpointHook', 'ExactResumeHook', 'NonFiniteGuardHook', 'SkipLedgerHook'):
        if not any(h.get('type') == name for h in hooks):
            hooks.append(dict(type=name))
    cfg.custom_hooks = hooks
    checkpoint_hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if isinstance(checkpoint_hook, dict) and checkpoint_hook.get('type') in ('CheckpointHook', None):
        checkpoint_hook['type'] = 'AtomicCheckpointHook'
    cfg.setdefault('default_scope', 'toolkit')
    if cfg.get('strategy') is not None:  # FSDP / DeepSpeed / ColossalAI through MMEngine's FlexibleRunner
        from toolkit.distributed import build_flexible_runner

        return build_flexible_runner(cfg)
    if cfg.get('launcher', 'none') != 'none' and not torch.cuda.is_available():
        _prepare_cpu_distributed(cfg)
    return ToolkitRunner.from_cfg(cfg)


def _prepare_cpu_distributed(cfg: Config) -> None:
    """Distributed training without CUDA: gloo, and DDP without device ids.

    MMEngine 0.10.7's ``init_dist`` calls ``torch.cuda.set_device`` and its DDP wrapper
    passes ``device_ids=[local_rank]``, both of which fail on CPU. The process group is
    initialised here (MMEngine then skips its own) and the wrapper gets ``device_ids=None``.
    """
    import torch.distributed as dist

    if cfg.launcher != 'pytorch':
        raise ValueError(
            f'CPU distributed training supports the pytorch launcher (torchrun), not {cfg.launcher!r}'
        )
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = '') -> dict[str, float | int | str]:
    """Flatten nested metric dicts to ``{'a/b': value}`` with plain Python values."""
    flat: dict[str, float | int | str] = {}
    for key, value in metrics.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=f'{name}/'))
        elif isinstance(value, torch.Tensor):
            flat[name] = value.item()
        elif hasattr(value, 'item'):
            flat[name] = value.item()
        else:
            flat[name] = value
    return flat


def write_metrics(metrics: Mapping[str, Any], work_dir: str) -> str:
    """Write metrics as one flat JSON object to ``work_dir/metrics.json``; return the path."""
    os.makedirs(work_dir, exist_ok=True)
    path = osp.join(work_dir, 'metrics.json')
    with open(path, 'w') as f:
        json.dump(flatten_metrics(metrics), f, indent=2, sort_keys=True)
    return path
