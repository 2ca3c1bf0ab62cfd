"""FLOPs of one call, counted by torch's ``FlopCounterMode`` with the CPU attention kernels it misses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['count_flops']

Shape = tuple[int, ...]


def _sdpa_forward(q_shape: Shape, k_shape: Shape, v_shape: Shape, *args: Any, **kwargs: Any) -> int:
    batch, heads, len_q, dim = q_shape
    return 2 * batch * heads * len_q * k_shape[2] * (dim + v_shape[3])


def _sdpa_backward(
    grad_shape: Shape, q_shape: Shape, k_shape: Shape, v_shape: Shape, *args: Any, **kwargs: Any
) -> int:
    batch, heads, len_q, dim = q_shape
    return 2 * batch * heads * len_q * k_shape[2] * (3 * dim + 2 * v_shape[3])


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (run it forward and backward) counted by ``FlopCounterMode``.

    torch's counter has no formula for the CPU flash-attention kernels ``F.scaled_dot_product_attention``
    dispatches to on CPU; they are added here with torch's own convention for the CUDA kernels (forward:
    QK^T and PV; backward: recomputed QK^T plus the four gradient products). Causal masks are not discounted.
    """
    aten = torch.ops.aten
    mapping: dict[Any, Any] = {}
    for name, formula in (
        ('_scaled_dot_product_flash_attention_for_cpu', _sdpa_forward),
        ('_scaled_dot_product_flash_attention_for_cpu_backward', _sdpa_backward),
    ):
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = formula
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())
