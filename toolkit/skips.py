"""Counted skips: every sample that a configured ``skip`` policy drops is recorded, never lost silently.

A skip can happen in any data-loader worker of any process, so the count cannot live in one object. Each
skip appends one JSON line (kind, source file, reason, pid) to a ledger file with ``O_APPEND`` (one small
write per line, so lines from concurrent writers never interleave) and bumps a per-process counter. The
toolkit's runner points the ledger at ``WORK_DIR/skipped_samples.jsonl`` through the environment (set before
workers start, so they inherit it); :class:`toolkit.hooks.SkipLedgerHook` reports the totals.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

from mmengine.logging import MMLogger

__all__ = ['LEDGER_ENV', 'local_skip_count', 'read_ledger', 'record_skip', 'set_ledger', 'summarize_ledger']

LEDGER_ENV = 'VLTOOLKIT_SKIP_LEDGER'
_local_counts: collections.Counter[str] = collections.Counter()
# A forked data-loader worker counts its own skips, not its parent's (the ledger has the totals).
os.register_at_fork(after_in_child=_local_counts.clear)


def set_ledger(path: str | None) -> None:
    """Record skips of this process (and of workers started after this call) to ``path`` (None: stop)."""
    if path is None:
        os.environ.pop(LEDGER_ENV, None)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    os.environ[LEDGER_ENV] = os.path.abspath(path)


def record_skip(kind: str, source: str, reason: str, **extra: Any) -> int:
    """Record one skipped sample; return how many of ``kind`` this process has skipped.

    Args:
        kind: what was skipped, e.g. ``'video'``, ``'image'``, ``'sample'``, ``'webdataset'``.
        source: the file (or shard/member) that caused it.
        reason: why, as shown to the user.
        extra: more plain-JSON fields for the ledger line (e.g. the dataset index).
    """
    _local_counts[kind] += 1
    line = dict(kind=kind, source=str(source), reason=str(reason), pid=os.getpid(), **extra)
    path = os.environ.get(LEDGER_ENV)
    if path:
        data = (json.dumps(line, sort_keys=True) + '\n').encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    MMLogger.get_current_instance().warning(
        f'skipped {kind} {source}: {reason} ({_local_counts[kind]} {kind} skip(s) in process {os.getpid()})'
    )
    return _local_counts[kind]


def local_skip_count(kind: str | None = None) -> int:
    """Skips recorded by this process (of ``kind``, or all)."""
    return sum(_local_counts.values()) if kind is None else _local_counts[kind]


def read_ledger(path: str) -> list[dict[str, Any]]:
    """Every line of a ledger (an absent file is an empty ledger)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize_ledger(path: str) -> dict[str, int]:
    """``{kind: count}`` over a ledger."""
    return dict(collections.Counter(line['kind'] for line in read_ledger(path)))
