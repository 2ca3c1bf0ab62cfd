"""Interleaved timing of several functions and robust summaries of their times, with the process set-up
(seed, threads) and output (progress on stderr, one JSON line on stdout) the benchmark scripts share."""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = [
    'emit_json',
    'interleaved_timings',
    'log',
    'seed_everything',
    'set_threads',
    'summarize',
    'summarize_iqr',
    'synchronize',
]


def log(message: str) -> None:
    """Progress goes to stderr so that stdout ends with the one JSON line."""
    print(message, file=sys.stderr, flush=True)


def emit_json(result: dict[str, Any]) -> None:
    print(json.dumps(result, sort_keys=True), flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed)


def set_threads(threads: int | None) -> int:
    """``torch.set_num_threads`` (default: every core this process may use); returns the count."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    torch.set_num_threads(int(threads))
    return int(threads)


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def interleaved_timings(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int,
    device: torch.device,
    on_warmup_done: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, in rounds (A, B, C, then B, C, A, ...) after ``warmup`` rounds.

    Interleaving spreads slow drifts of the machine (other processes, thermal state) evenly over the
    functions compared; rotating the order each round spreads the cost of following a given function (its
    freed memory returned to the system and faulted in again, its evicted caches) evenly too.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_index in range(warmup + repeats):
        is_warmup = round_index < warmup
        if round_index == warmup and on_warmup_done is not None:
            on_warmup_done()
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            seconds = time.perf_counter() - start
            if is_warmup:
                label = f'warm-up {round_index + 1}/{warmup}'
            else:
                label = f'repeat {round_index - warmup + 1}/{repeats}'
            log(f'  {label:>16}  {name:<22} {seconds * 1e3:10.1f} ms')
            if not is_warmup:
                times[name].append(seconds)
    return times


def summarize(seconds: list[float]) -> dict[str, float]:
    """Median, min, max (ms) and the spread ``(max - min) / median`` in percent."""
    median = statistics.median(seconds)
    return {
        'median_ms': median * 1e3,
        'min_ms': min(seconds) * 1e3,
        'max_ms': max(seconds) * 1e3,
        'spread_pct': 100.0 * (max(seconds) - min(seconds)) / median if median > 0 else 0.0,
    }


def summarize_iqr(seconds: list[float]) -> dict[str, float]:
    """Median, quartiles, IQR, min and max in ms."""
    ms = sorted(s * 1e3 for s in seconds)
    median = statistics.median(ms)
    q1, _, q3 = statistics.quantiles(ms, n=4, method='inclusive') if len(ms) > 1 else (median,) * 3
    return dict(median_ms=median, q1_ms=q1, q3_ms=q3, iqr_ms=q3 - q1, min_ms=ms[0], max_ms=ms[-1])
