"""Transforms for image-text samples: caption sampling and packing into model inputs."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.structures import BaseDataElement

from toolkit.registry import TRANSFORMS

__all__ = ['PackImageTextInputs', 'SampleCaption']


@TRANSFORMS.register_module()
class SampleCaption(BaseTransform):
    """Pick one of the record's ``captions`` (uniformly, with Python's seeded RNG) as ``text``."""

    def transform(self, results: dict[str, Any]) -> dict[str, Any]:
        captions = results['captions']
        results['text'] = captions[random.randrange(len(captions))]
        return results


@TRANSFORMS.register_module()
class PackImageTextInputs(BaseTransform):
    """Pack an image (H, W, C) uint8 array and its text into ``inputs`` (C, H, W) and a data sample.

    The data sample carries ``text`` (the training caption, when sampled),
    ``gt_captions`` (all references) and the meta keys (``img_id``, ``img_path``,
    ``ori_shape``, ``img_shape`` by default).
    """

    def __init__(
        self, *, meta_keys: tuple[str, ...] = ('img_id', 'img_path', 'ori_shape', 'img_shape')
    ) -> None:
        self.meta_keys = meta_keys

    def transform(self, results: dict[str, Any]) -> dict[str, Any]:
        img = results['img']
        if img.ndim == 2:
            img = img[..., None]
        inputs = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        sample = BaseDataElement(metainfo={k: results[k] for k in self.meta_keys if k in results})
        if 'text' in results:
            sample.text = results['text']
        if 'captions' in results:
            sample.gt_captions = list(results['captions'])
        return dict(inputs=inputs, data_samples=sample)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(meta_keys={self.meta_keys})'
