"""Transforms for image-text samples: caption sampling and packing into model inputs."""

from __future__ import annotations

import random
import re
from typing import Any

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.structures import BaseDataElement

from toolkit.registry import TRANSFORMS

__all__ = ['PackImageTextInputs', 'RandomFlipCaption', 'SampleCaption']


@TRANSFORMS.register_module()
class SampleCaption(BaseTransform):
    """Pick one of the record's ``captions`` (uniformly, with Python's seeded RNG) as ``text``."""

    def transform(self, results: dict[str, Any]) -> dict[str, Any]:
        captions = results['captions']
        results['text'] = captions[random.randrange(len(captions))]
        return results


@TRANSFORMS.register_module()
class RandomFlipCaption(BaseTransform):
    """Flip the image horizontally and swap the words that name a side in its text.

    A plain flip would make "a circle left of a square" false; swapping ``left`` and
    ``right`` (and any other pairs given) keeps image and text consistent, so the flip
    doubles the data without teaching wrong relations. Only use it where every word
    that depends on the side is listed in ``swap`` and every object is symmetric under
    the flip (true for Shapes World images).

    Args:
        prob: Probability of flipping.
        swap: Word pairs exchanged in ``text`` and ``captions`` (both directions).
    """

    def __init__(self, *, prob: float = 0.5, swap: dict[str, str] | None = None) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f'prob must be in [0, 1], got {prob}')
        self.prob = prob
        pairs = dict(swap or {'left': 'right'})
        self.swap = {**pairs, **{v: k for k, v in pairs.items()}}
        self.pattern = re.compile(r'\b(' + '|'.join(map(re.escape, self.swap)) + r')\b')

    def _swap_words(self, text: str) -> str:
        return self.pattern.sub(lambda m: self.swap[m.group(1)], text)

    def transform(self, results: dict[str, Any]) -> dict[str, Any]:
        if random.random() >= self.prob:
            return results
        results['img'] = np.ascontiguousarray(results['img'][:, ::-1])
        if 'text' in results:
            results['text'] = self._swap_words(results['text'])
        if 'captions' in results:
            results['captions'] = [self._swap_words(c) for c in results['captions']]
        results['flipped'] = True
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
