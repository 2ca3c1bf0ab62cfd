"""Where the time of one call goes: per stage (forward hooks on groups of modules) and per op (profiler)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from toolkit.benchmark.timing import log, synchronize

__all__ = ['profile_ops', 'stage_times']


def stage_times(
    groups: dict[str, list[nn.Module]], run: Callable[[], Any], device: torch.device
) -> dict[str, float]:
    """Milliseconds per stage of one ``run()``: each stage the summed forward time of its modules.

    Stages whose name starts with a space are parts of the stage above them (not added to the total of the
    stages); ``other`` is what no top-level stage covers (prompt, post-processing).
    """
    totals = dict.fromkeys(groups, 0.0)
    starts: dict[int, float] = {}
    handles: list[RemovableHandle] = []

    def pre(module: nn.Module, inputs: Any) -> None:
        synchronize(device)
        starts[id(module)] = time.perf_counter()

    for group, modules in groups.items():

        def post(module: nn.Module, inputs: Any, output: Any, group: str = group) -> None:
            synchronize(device)
            totals[group] += (time.perf_counter() - starts.pop(id(module))) * 1e3

        for module in modules:
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        total = (time.perf_counter() - start) * 1e3
    finally:
        for handle in handles:
            handle.remove()
    top = sum(value for group, value in totals.items() if not group.startswith(' '))
    return {**totals, 'other (prompt, post-processing)': total - top, 'total': total}


def profile_ops(run: Callable[[], Any], device: torch.device, rows: int) -> list[tuple[str, float]]:
    """torch.profiler's top ``rows`` ops by self time (CUDA time on CUDA), in ms; the table goes to stderr."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        run()
        synchronize(device)
    key = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    events = prof.key_averages()
    log(events.table(sort_by=key, row_limit=rows))
    ranked = sorted(events, key=lambda event: getattr(event, key), reverse=True)[:rows]
    return [(event.key, getattr(event, key) / 1e3) for event in ranked]
