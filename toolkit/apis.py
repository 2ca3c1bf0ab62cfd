"""Build a model from its config and load its weights: the first call of every inferencer and script.

``init_model('configs/.../x.py', 'work_dirs/x/epoch_12.pth')`` returns the config's model in eval mode on the
requested device, as mmdet's ``init_detector`` and open_clip's ``create_model`` do. Checkpoints load safely
(:func:`toolkit.checkpoint.load_state_dict_file`: ``weights_only`` torch files or ``.safetensors``), from a
``tools/train.py`` checkpoint (its ``state_dict``) or a bare state dict; a ``module.`` prefix (DDP or EMA
wrappers) is removed by :func:`toolkit.checkpoint.strip_prefix`. A checkpoint that does not fit the model is
refused with the keys and shapes that differ.
"""

from __future__ import annotations

import os
import os.path as osp
from collections.abc import Mapping
from typing import Any

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from torch import nn

from toolkit.checkpoint import load_state_dict_file, state_dict_mismatch, strip_prefix
from toolkit.registry import MODELS

__all__ = ['CheckpointMismatchError', 'init_model', 'load_config', 'load_weights']


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not fit the model; the message names the file and the keys."""


def load_config(
    config: str | os.PathLike[str] | Config, cfg_options: Mapping[str, Any] | None = None
) -> Config:
    """A config from a path (or a copy of a ``Config``) with ``cfg_options`` merged in
    (``{'model.test_cfg.rcnn.score_thr': 0.1}``, as ``--cfg-options``)."""
    if isinstance(config, Config):
        cfg = Config(config.to_dict(), filename=config.filename)
    else:
        path = os.fspath(config)
        if not osp.isfile(path):
            raise FileNotFoundError(f'config {path} does not exist')
        cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    if cfg.get('model') is None:
        raise ValueError(f'config {cfg.filename} has no model')
    return cfg


def load_weights(model: nn.Module, checkpoint: str | os.PathLike[str]) -> None:
    """Load ``checkpoint`` into ``model`` strictly; :class:`CheckpointMismatchError` lists what differs."""
    path = os.fspath(checkpoint)
    state_dict = strip_prefix(load_state_dict_file(path), 'module.')
    mismatch = state_dict_mismatch(state_dict, model.state_dict())
    if any(mismatch.values()):
        names = {'missing': 'missing keys', 'unexpected': 'unexpected keys', 'shape': 'shapes differ'}
        parts = [
            f'{len(items)} {names[kind]}: {", ".join(items[:5])}{", ..." if len(items) > 5 else ""}'
            for kind, items in mismatch.items()
            if items
        ]
        raise CheckpointMismatchError(
            f'checkpoint {path} does not fit the {type(model).__name__} of the config: {"; ".join(parts)}'
        )
    model.load_state_dict(state_dict, strict=True)


def init_model(
    config: str | os.PathLike[str] | Config,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = 'cpu',
    cfg_options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The config's model with the checkpoint's weights, in eval mode on ``device``.

    Args:
        config: a config file or a ``Config`` (not modified).
        checkpoint: a ``tools/train.py`` checkpoint, a bare state dict (torch file) or a ``.safetensors``
            file; ``None`` initialises the model as its config says (``init_weights``: random, or the
            ``pretrained`` files the config names).
        device: torch device of the model.
        cfg_options: overrides merged into the config first, as ``--cfg-options``.

    Returns:
        The model, with the config it was built from as ``model.cfg``.
    """
    cfg = load_config(config, cfg_options)
    init_default_scope(cfg.get('default_scope', 'toolkit'))
    model = MODELS.build(cfg.model)
    if checkpoint is None:
        model.init_weights()
    else:
        load_weights(model, checkpoint)
    model.cfg = cfg
    return model.to(torch.device(device)).eval()
