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

__all__ = [
    'CleanCaption',
    'PackImageTextInputs',
    'RandomFlipCaption',
    'ResizeShortEdgeCenterCrop',
    'SampleCaption',
    'SwapWordNegative',
]


_ALBEF_PUNCT = re.compile(r"([,.'!?\"()*#:;~])")
_SPACES = re.compile(r'\s{2,}')


@TRANSFORMS.register_module()
class CleanCaption(BaseTransform):
    """ALBEF's ``pre_caption`` (salesforce/ALBEF ``dataset/utils.py``) on ``text``, ``captions`` and
    ``gt_captions``: lower-case, drop ``,.'!?"()*#:;~``, ``-`` and ``/`` to spaces, ``<person>`` to
    ``person``, collapse runs of white space, strip, keep the first ``max_words`` words.

    Args:
        max_words: words kept (ALBEF 30; ``None``: all).
    """

    def __init__(self, *, max_words: int | None = 30) -> None:
        if max_words is not None and max_words < 1:
            raise ValueError(f'max_words must be >= 1 or None, got {max_words}')
        self.max_words = max_words

    def clean(self, caption: str) -> str:
        caption = _ALBEF_PUNCT.sub('', caption.lower())
        caption = caption.replace('-', ' ').replace('/', ' ').replace('<person>', 'person')
        caption = _SPACES.sub(' ', caption).rstrip('\n').strip(' ')
        words = caption.split(' ')
        if self.max_words is not None and len(words) > self.max_words:
            caption = ' '.join(words[: self.max_words])
        return caption

    def transform(self, results: dict[str, Any]) -> dict[str, Any]:
        if 'text' in results:
            results['text'] = self.clean(results['text'])
        for key in ('captions', 'gt_captions'):
            if key in results:
                results[key] = [self.clean(caption) for caption in results[key]]
        return results


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


_A_BEFORE_VOWEL = re.compile(r'\b([Aa]) (?=[aeiou])')
_AN_BEFORE_CONSONANT = re.compile(r'\b([Aa])n (?=[b-df-hj-np-tv-z])')


def _fix_articles(text: str) -> str:
    """'a orange' -> 'an orange', 'an red' -> 'a red': a swapped word must not give itself away."""
    return _AN_BEFORE_CONSONANT.sub(r'\1 ', _A_BEFORE_VOWEL.sub(r'\1n ', text))


@TRANSFORMS.register_module()
class SwapWordNegative(BaseTransform):
    """A hard negative caption: ``text`` with one word replaced by another of its group (``negative_text``).

    NegCLIP (Yuksekgonul et al., "When and why vision-language models behave like bags-of-words", ICLR 2023,
    Sec. 4) adds such swapped captions as extra negatives of the contrastive loss, so that the text embedding
    cannot ignore the swapped kind of word. With Shapes World's shape and colour words: a contrastive batch of
    random images rarely holds two images of the same colours with different shapes, and the pooled text
    embedding of a short name ends up encoding its colour only; a swapped shape word makes shapes count.

    Args:
        groups: interchangeable words (e.g. shape nouns; plural forms in a group of their own). One occurrence
            of any group word is drawn uniformly (Python's seeded RNG) and replaced by another word of its
            group, drawn uniformly.

    The English article before the new word is fixed ('an orange' -> 'a red'), so that grammar does not give
    the negative away. A text with no group word gets its words in reversed order instead (NegCLIP's order
    perturbation); ``swapped_words`` (0 or 1) records which happened.
    """

    def __init__(self, *, groups: list[list[str]]) -> None:
        self.groups = [list(dict.fromkeys(group)) for group in groups]
        if not self.groups or any(len(group) < 2 for group in self.groups):
            raise ValueError('SwapWordNegative: every group needs at least two different words')
        self.group_of: dict[str, int] = {}
        for index, group in enumerate(self.groups):
            for word in group:
                if word in self.group_of:
                    raise ValueError(f'SwapWordNegative: {word!r} is in two groups')
                self.group_of[word] = index
        self.pattern = re.compile(
            r'\b(' + '|'.join(map(re.escape, sorted(self.group_of, key=len)[::-1])) + r')\b'
        )

    def negative(self, text: str) -> tuple[str, int]:
        matches = list(self.pattern.finditer(text))
        if not matches:
            return ' '.join(text.split()[::-1]), 0
        match = matches[random.randrange(len(matches))]
        group = self.groups[self.group_of[match.group(1)]]
        others = [word for word in group if word != match.group(1)]
        swapped = text[: match.start()] + others[random.randrange(len(others))] + text[match.end() :]
        return _fix_articles(swapped), 1

    def transform(self, results: dict[str, Any]) -> dict[str, Any]:
        if 'text' not in results:
            raise KeyError('SwapWordNegative needs a sampled `text` (put it after SampleCaption)')
        results['negative_text'], results['swapped_words'] = self.negative(results['text'])
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(groups={self.groups})'


@TRANSFORMS.register_module()
class ResizeShortEdgeCenterCrop(BaseTransform):
    """open_clip's (torchvision's) eval transform: resize the short edge to ``size`` with PIL, centre crop.

    Pixel for pixel as ``Resize(size, interpolation) + CenterCrop(size)`` of torchvision on a PIL image: the
    long edge is ``int(size * long / short)`` (truncated, where mmdet's ``ResizeShortestEdge`` rounds), PIL's
    antialiased resampling, crop offsets ``round((edge - size) / 2)``. Reads and writes ``img`` (H, W, 3)
    uint8 in BGR (as loaded); updates ``img_shape``.

    Args:
        size: output side.
        interpolation: ``'bicubic'`` (open_clip's default), ``'bilinear'`` or ``'nearest'``.
    """

    _PIL = {'bicubic': 3, 'bilinear': 2, 'nearest': 0}  # PIL.Image.Resampling values

    def __init__(self, *, size: int = 224, interpolation: str = 'bicubic') -> None:
        if interpolation not in self._PIL:
            raise ValueError(f'interpolation must be one of {sorted(self._PIL)}, got {interpolation!r}')
        self.size, self.interpolation = int(size), interpolation

    def transform(self, results: dict[str, Any]) -> dict[str, Any]:
        from PIL import Image

        img = results['img']
        height, width = img.shape[:2]
        short, long = min(height, width), max(height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        new_h, new_w = (new_short, new_long) if height <= width else (new_long, new_short)
        if (new_h, new_w) != (height, width):
            pil = Image.fromarray(np.ascontiguousarray(img[..., ::-1]))  # BGR -> RGB
            img = np.asarray(pil.resize((new_w, new_h), self._PIL[self.interpolation]))[..., ::-1]
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        results['img'] = np.ascontiguousarray(img[top : top + self.size, left : left + self.size])
        results['img_shape'] = results['img'].shape[:2]
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(size={self.size}, interpolation={self.interpolation!r})'


@TRANSFORMS.register_module()
class PackImageTextInputs(BaseTransform):
    """Pack an image (H, W, C) uint8 array and its text into ``inputs`` (C, H, W) and a data sample.

    The data sample carries ``text`` (the training caption, when sampled), ``negative_text`` (a hard
    negative caption, when made), ``gt_captions`` (all references) and the meta keys (``img_id``,
    ``img_path``, ``ori_shape``, ``img_shape`` by default).
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
        if 'negative_text' in results:
            sample.negative_text = results['negative_text']
        if 'captions' in results:
            sample.gt_captions = list(results['captions'])
        return dict(inputs=inputs, data_samples=sample)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(meta_keys={self.meta_keys})'
