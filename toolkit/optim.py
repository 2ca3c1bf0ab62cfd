"""Mixed precision where MMEngine's ``AmpOptimWrapper`` cannot run: bfloat16 autocast on CPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper

from toolkit.registry import OPTIM_WRAPPERS

__all__ = ['BF16AutocastOptimWrapper']


@OPTIM_WRAPPERS.register_module()
class BF16AutocastOptimWrapper(OptimWrapper):
    """Run the forward pass under ``torch.autocast(device, torch.bfloat16)``.

    bfloat16 keeps float32's exponent range, so no loss scaling is needed. Used by
    ``tools/train.py --amp`` on machines without CUDA (on CUDA it uses ``AmpOptimWrapper``).
    """

    @contextmanager
    def optim_context(self, model: torch.nn.Module) -> Iterator[None]:
        device = next(model.parameters()).device.type
        with super().optim_context(model), torch.autocast(device_type=device, dtype=torch.bfloat16):
            yield
