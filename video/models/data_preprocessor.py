"""Data preprocessor for batches of images or video clips (one modality per batch).

MMEngine's ``ImgDataPreprocessor`` only takes (C, H, W) inputs. Video models take clips (C, T, H, W) and,
when trained jointly with images, image batches too. This preprocessor stacks either, casts to float and
normalises per channel. Images loaded by ``LoadImageFromFile`` are BGR and are flipped to RGB
(``image_bgr_to_rgb``); decoded clips are already RGB.

A batch must hold one modality and one shape: joint training groups its batches with
``GroupBySourceBatchSampler`` (:mod:`toolkit.samplers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from mmengine.model import BaseDataPreprocessor
from torch import Tensor

from toolkit.registry import MODELS

__all__ = ['VideoTextDataPreprocessor']


@MODELS.register_module()
class VideoTextDataPreprocessor(BaseDataPreprocessor):
    """Stack, move, cast and normalise ``inputs`` of images (C, H, W) or clips (C, T, H, W).

    Args:
        mean: per-channel mean (RGB order, in the 0-255 range of the inputs).
        std: per-channel standard deviation.
        image_bgr_to_rgb: flip the channels of image (3D) inputs, which ``LoadImageFromFile`` reads as BGR.
        non_blocking: non-blocking host-to-device copies.

    Output: ``inputs`` (B, C, H, W) or (B, C, T, H, W) float, normalised; ``data_samples`` unchanged.
    """

    def __init__(
        self,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        image_bgr_to_rgb: bool = True,
        non_blocking: bool = False,
    ) -> None:
        super().__init__(non_blocking=non_blocking)
        if len(mean) != len(std):
            raise ValueError(f'mean and std must have one value per channel, got {len(mean)} and {len(std)}')
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32), persistent=False)
        self.image_bgr_to_rgb = image_bgr_to_rgb

    def _stack(self, inputs: Any) -> Tensor:
        if isinstance(inputs, Tensor):
            return inputs
        shapes = {tuple(item.shape) for item in inputs}
        if len(shapes) != 1:
            raise ValueError(
                f'a batch must hold inputs of one shape, got {sorted(shapes)}; batch images and clips '
                "apart (batch_sampler=dict(type='GroupBySourceBatchSampler')) and resize to one size"
            )
        return torch.stack(list(inputs))

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        batch = self._stack(data['inputs']).float()
        channels = self.mean.numel()
        if batch.dim() not in (4, 5) or batch.shape[1] != channels:
            raise ValueError(
                f'expected inputs (B, {channels}, H, W) or (B, {channels}, T, H, W), got {tuple(batch.shape)}'
            )
        if batch.dim() == 4 and self.image_bgr_to_rgb:
            batch = batch.flip(1)
        view = (1, channels) + (1,) * (batch.dim() - 2)
        batch = (batch - self.mean.view(view)) / self.std.view(view)
        return {'inputs': batch, 'data_samples': data.get('data_samples')}
