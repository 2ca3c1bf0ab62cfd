"""Safe checkpoint loading and the plain-data form of what the Runner saves.

Checkpoints are read with ``torch.load(weights_only=True)``: the unpickler builds
tensors and plain containers only, plus the types listed in ``SAFE_GLOBALS``. A file
that needs anything else is refused with :class:`UnsafeCheckpointError`, naming the
file and the type, instead of running code from it.

MMEngine 0.10.7 saves ``HistoryBuffer`` objects and NumPy scalars in the message
hub, which ``weights_only`` loading rejects. :func:`to_plain` turns them into plain
data before a save and :func:`from_plain` restores them after a load; the
``SafeCheckpointHook`` (``toolkit.hooks``) calls both at the Runner's checkpoint
events, and :func:`install_safe_loader` makes MMEngine's local-file loader (used by
``load_from``, ``resume`` and ``load_checkpoint``) go through :func:`safe_load`; ``.safetensors`` weight
files load there too.

Saving is atomic and verifiable: :func:`atomic_replace` moves a fully written, fsynced temporary file onto
its final name (a crash leaves the old file or the new one, never half of one), and
:func:`write_checkpoint_record` stores the size and SHA-256 of a saved checkpoint beside it
(``NAME.record.json``) so that :func:`verify_checkpoint` can tell a complete file from a truncated or
corrupted one before resuming from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from torch import nn

__all__ = [
    'SAFE_GLOBALS',
    'UnsafeCheckpointError',
    'atomic_replace',
    'atomic_write_text',
    'checkpoint_record_path',
    'file_sha256',
    'from_plain',
    'install_safe_loader',
    'load_converted',
    'load_state_dict_file',
    'state_dict_mismatch',
    'safe_load',
    'save_state_dict_file',
    'strip_prefix',
    'to_plain',
    'verify_checkpoint',
    'write_checkpoint_record',
]

# Types our checkpoints may hold beyond what ``weights_only`` accepts by default
# (tensors, OrderedDict, builtin containers and scalars). Saved checkpoints are
# converted to plain data, so nothing else is needed; keep this list explicit.
SAFE_GLOBALS: tuple[Any, ...] = ()

_HISTORY_BUFFER_TAG = '__history_buffer__'


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds objects outside the allow-list (or is not a torch file)."""


def _refusal_reason(message: str) -> str:
    patterns = (
        r'Unsupported global: GLOBAL ([\w.]+)',
        r'unsupported GLOBAL ([\w.]+)',
        r"but got <class '([\w.]+)'>",
    )
    for pattern in patterns:
        match = re.search(pattern, message)
        if match:
            allow = 'toolkit.checkpoint.SAFE_GLOBALS'
            return f'it needs {match.group(1)!r}, which is not on the allow-list ({allow})'
    return 'it could not be unpickled with weights_only=True'


def safe_load(path: str | os.PathLike[str], map_location: Any = 'cpu') -> Any:
    """Load a torch checkpoint with ``weights_only=True`` and the toolkit's allow-list.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file needs a type that is not allowed, or is corrupt.
    """
    path = os.fspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f'refusing to load checkpoint {path}: {_refusal_reason(str(err))}. Only plain tensors and '
            'containers are loaded; re-save trusted checkpoints as plain state dicts.'
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UnsafeCheckpointError(f'checkpoint {path} is corrupt or truncated: {err}') from err


def load_state_dict_file(
    path: str | os.PathLike[str], *, wrappers: Sequence[str] = ('state_dict',)
) -> dict[str, torch.Tensor]:
    """Load a bare state dict from ``.safetensors`` or a torch file (safely), for converters.

    A torch file holding a dict under the first of ``wrappers`` it has (a Runner checkpoint's
    ``state_dict``; add ``'model'`` for maskrcnn_benchmark, ``'module'`` for DDP saves) is unwrapped.

    Raises:
        UnsafeCheckpointError: the file holds something else than a state dict of tensors.
    """
    path = os.fspath(path)
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file

        return load_file(path)
    obj = safe_load(path)
    for wrapper in wrappers:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UnsafeCheckpointError(f'{path} does not hold a state dict of tensors')
    return obj


def strip_prefix(
    state_dict: Mapping[str, Any], prefix: str = 'module.', *, nested: bool = False
) -> dict[str, Any]:
    """``state_dict`` without ``prefix`` (DDP's and EMA's ``module.``) when every key has it; else a copy.

    ``nested``: strip it as long as every key still has it (a wrapper in a wrapper).
    """
    out = dict(state_dict)
    while out and all(key.startswith(prefix) for key in out):
        out = {key[len(prefix) :]: value for key, value in out.items()}
        if not nested:
            break
    return out


def save_state_dict_file(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """Write a bare state dict: ``.safetensors`` (with ``metadata``) by the extension, else a torch file
    (loadable with ``weights_only``). Tensors are saved as contiguous CPU copies (safetensors keeps no shared
    or sliced storage); the folder is created."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plain = {key: value.detach().cpu().contiguous().clone() for key, value in tensors.items()}
    if path.endswith('.safetensors'):
        from safetensors.torch import save_file

        save_file(plain, path, metadata=metadata)
    else:
        torch.save(plain, path)


def state_dict_mismatch(
    tensors: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, list[str]]:
    """What keeps ``tensors`` from loading strictly into a model whose state dict is ``target``, each list
    sorted and empty when it fits: ``missing`` (model keys ``tensors`` does not provide), ``unexpected`` (keys
    the model lacks) and ``shape`` (``'key: checkpoint (...), model (...)'``)."""
    return dict(
        missing=sorted(set(target) - set(tensors)),
        unexpected=sorted(set(tensors) - set(target)),
        shape=sorted(
            f'{key}: checkpoint {tuple(value.shape)}, model {tuple(target[key].shape)}'
            for key, value in tensors.items()
            if key in target and tuple(value.shape) != tuple(target[key].shape)
        ),
    )


def load_converted(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Load converted ``tensors`` non-strictly into ``module``; returns its keys left at their initialisation.

    Raises:
        ValueError: a tensor has no counterpart in ``module``.
    """
    result = module.load_state_dict(dict(tensors), strict=False)
    if result.unexpected_keys:
        raise ValueError(f'unexpected keys: {result.unexpected_keys}')
    return sorted(result.missing_keys)


def to_plain(obj: Any) -> Any:
    """Recursively replace HistoryBuffers and NumPy values with plain Python data."""
    if isinstance(obj, HistoryBuffer):
        return {
            _HISTORY_BUFFER_TAG: True,
            'log': obj._log_history.tolist(),
            'count': obj._count_history.tolist(),
            'max_length': obj.max_length,
        }
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    return obj


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain` for HistoryBuffers (NumPy scalars stay Python numbers)."""
    if isinstance(obj, dict):
        if obj.get(_HISTORY_BUFFER_TAG) is True:
            return HistoryBuffer(obj['log'], obj['count'], obj['max_length'])
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    return obj


def _mmengine_local_loader(filename: str, map_location: Any) -> Any:
    if filename.endswith('.safetensors'):  # weights only: MMEngine takes a bare state dict as one
        from safetensors.torch import load_file

        device = map_location if isinstance(map_location, str) and map_location != 'default' else 'cpu'
        return load_file(filename, device=device)
    return safe_load(filename, map_location=map_location)


def install_safe_loader() -> Callable[[str, Any], Any]:
    """Route MMEngine's local checkpoint loading through :func:`safe_load`. Idempotent."""
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes='', loader=_mmengine_local_loader, force=True)
    return _mmengine_local_loader


# ----------------------------------------------------------------------------------------------------------
# Atomic, verifiable writes
# ----------------------------------------------------------------------------------------------------------

_RECORD_SUFFIX = '.record.json'


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_replace(tmp_path: str, final_path: str) -> None:
    """fsync ``tmp_path`` (fully written), rename it onto ``final_path`` and fsync the folder."""
    with open(tmp_path, 'rb+') as f:
        os.fsync(f.fileno())
    os.replace(tmp_path, final_path)
    _fsync_dir(os.path.dirname(os.path.abspath(final_path)))


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and :func:`atomic_replace`."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        atomic_replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def file_sha256(path: str, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_record_path(path: str) -> str:
    return path + _RECORD_SUFFIX


def write_checkpoint_record(path: str, *, record_for: str | None = None, **info: Any) -> dict[str, Any]:
    """Record the size and SHA-256 of the complete checkpoint ``path`` (plus ``info``) beside it.

    ``record_for``: the name the file will have (it is recorded before a temporary file is renamed).
    """
    name = record_for or path
    record = dict(file=os.path.basename(name), size=os.path.getsize(path), sha256=file_sha256(path), **info)
    atomic_write_text(checkpoint_record_path(name), json.dumps(record, indent=1, sort_keys=True))
    return record


def verify_checkpoint(path: str) -> str | None:
    """Why ``path`` is not a complete checkpoint (missing, truncated, corrupted, unrecorded), or None.

    A checkpoint without a record (one saved by another tool) is not vouched for: the reason says so, and
    the caller decides whether to trust it.
    """
    if not os.path.isfile(path):
        return f'{path} does not exist'
    record_path = checkpoint_record_path(path)
    if not os.path.isfile(record_path):
        name = os.path.basename(record_path)
        return f'{path} has no record ({name}): it was not saved completely by the toolkit'
    try:
        with open(record_path) as f:
            record = json.load(f)
        size, sha256 = int(record['size']), str(record['sha256'])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f'the record {record_path} is unreadable ({err})'
    actual = os.path.getsize(path)
    if actual != size:
        return f'{path} is truncated or overwritten: {actual} bytes, {size} recorded at save time'
    if file_sha256(path) != sha256:
        return f'{path} is corrupted: its SHA-256 differs from the one recorded at save time'
    return None
