"""Memory of a model and the peak growth of memory during one call, on CPU (RSS) and CUDA (allocator)."""

from __future__ import annotations

import gc
import resource
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from toolkit.benchmark.timing import synchronize

__all__ = ['MIB', 'cpu_peak_growth', 'cuda_peak_growth', 'weights_mib']

MIB = 2**20


def weights_mib(model: nn.Module) -> float:
    """Parameters and buffers, MiB."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / MIB


def _status_mib(field: str) -> float:
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024 / MIB  # kB
    raise RuntimeError(f'/proc/self/status has no {field}')


def cpu_peak_growth(run: Callable[[], Any]) -> dict[str, Any]:
    """Peak RSS growth (MiB) of this process during ``run()`` over its RSS before."""
    gc.collect()
    before = _status_mib('VmRSS')
    try:
        with open('/proc/self/clear_refs', 'w') as refs:
            refs.write('5')  # resets VmHWM to the current RSS (Linux >= 4.0)
        reset = True
    except OSError:
        reset = False
    run()
    # Without the reset, ru_maxrss (KiB on Linux) also holds the build's peak: an upper bound.
    peak = _status_mib('VmHWM') if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB
    return dict(rss_before_mib=before, peak_rss_mib=peak, peak_growth_mib=peak - before, hwm_reset=reset)


def cuda_peak_growth(run: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Peak growth (MiB) of the memory allocated on ``device`` during ``run()``."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {'allocated_before_mib': before / MIB, 'peak_growth_mib': (peak - before) / MIB}
