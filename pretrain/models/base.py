"""What the image-text models of ``pretrain/`` share: the ``forward(mode=...)`` dispatch and ``device``.

Subclasses implement ``loss(inputs, data_samples)`` (a dict of losses and logged scalars), ``predict(inputs,
data_samples)`` (the samples, filled in) and ``_forward_tensor(inputs, data_samples)`` (a dict of tensors).
"""

from __future__ import annotations

import torch
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement
from torch import Tensor

__all__ = ['VLBaseModel']


class VLBaseModel(BaseModel):
    """``BaseModel`` with the ``'loss'`` / ``'predict'`` / ``'tensor'`` dispatch of MMEngine's runner."""

    def forward(
        self, inputs: Tensor, data_samples: list[BaseDataElement] | None = None, mode: str = 'tensor'
    ) -> dict[str, Tensor] | list[BaseDataElement]:
        if mode == 'loss':
            return self.loss(inputs, data_samples or [])
        if mode == 'predict':
            return self.predict(inputs, data_samples or [])
        if mode == 'tensor':
            return self._forward_tensor(inputs, data_samples)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def loss(self, inputs: Tensor, data_samples: list[BaseDataElement]) -> dict[str, Tensor]:
        raise NotImplementedError

    def predict(self, inputs: Tensor, data_samples: list[BaseDataElement]) -> list[BaseDataElement]:
        raise NotImplementedError

    def _forward_tensor(
        self, inputs: Tensor, data_samples: list[BaseDataElement] | None
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Switch gradient checkpointing of every encoder / decoder that has the switch (ViT, BERT, Multiway,
        FIBER backbone, text decoder); the constructor flags of the sub-configs set the same attribute."""
        for module in self.modules():
            if module is not self and hasattr(module, 'set_grad_checkpointing'):
                module.set_grad_checkpointing(enable)
