"""The interface every open-vocabulary detector of the toolkit implements, for callers outside training.

A vocabulary (category names) is encoded once by :meth:`OpenVocabularyDetector.encode_vocabulary`, which
also checks it (a name the model cannot use raises ``ValueError`` naming it), and the encoding is passed to
:meth:`OpenVocabularyDetector.predict_vocabulary` with each batch. The detector keeps nothing between calls:
a caller that sees the same vocabulary often (an inferencer, a server) caches the :class:`Vocabulary` it got,
in a cache it owns and bounds (:class:`detection.apis.OVDetInferencer`).

What the encoding holds is the detector's business: the MaMMUT detector's is the frozen text decoder's name
embeddings (C, E); FIBER's, whose fusion runs in the backbone with the image, is the tokenized prompts of the
vocabulary's chunks. ``score_thr`` and ``max_per_img`` given to ``predict_vocabulary`` replace the
configured test thresholds for that call only, applied where the detector applies its own.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mmdet.structures import SampleList
from torch import Tensor

__all__ = ['OpenVocabularyDetector', 'Vocabulary', 'check_names', 'repeated_names']


@dataclass(frozen=True)
class Vocabulary:
    """Category names and a detector's encoding of them (see the module docstring)."""

    names: tuple[str, ...]
    encoding: Any


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple; ``ValueError`` if there are none or one is empty or not text. (A name listed
    twice is allowed here, as data sets may list one; callers that take names from people refuse repeats:
    :func:`repeated_names`.)"""
    names = tuple(names)
    if not names:
        raise ValueError('the vocabulary has no names')
    if empty := [i for i, name in enumerate(names) if not isinstance(name, str) or not name.strip()]:
        raise ValueError(f'names at positions {empty} are empty or not text')
    return names


def repeated_names(names: Sequence[str]) -> list[str]:
    """The names listed more than once (sorted): each would split its boxes between two labels."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


class OpenVocabularyDetector(abc.ABC):
    """Mixin of a detector that finds the objects named by any vocabulary (see the module docstring)."""

    @abc.abstractmethod
    def encode_vocabulary(self, names: Sequence[str]) -> Vocabulary:
        """Check and encode ``names``; ``ValueError`` naming a name that cannot be used."""

    @abc.abstractmethod
    def predict_vocabulary(
        self,
        batch_inputs: Tensor,
        batch_data_samples: SampleList,
        vocabulary: Vocabulary,
        *,
        rescale: bool = True,
        score_thr: float | None = None,
        max_per_img: int | None = None,
    ) -> SampleList:
        """Detections of every image for ``vocabulary`` (``pred_instances`` with ``labels`` indexing its names
        and ``label_names``), with the configured thresholds unless ``score_thr`` / ``max_per_img`` are given.

        Args:
            batch_inputs: preprocessed images (B, 3, H, W), as ``data_preprocessor`` returns them.
            batch_data_samples: their B data samples (metainfo: ``img_shape``, ``scale_factor``...).
            vocabulary: from :meth:`encode_vocabulary` of this detector.
            rescale: boxes in the original images' pixels.
            score_thr: keep detections whose final score is at least this (FIBER: GLIP's
                ``sqrt(score * centerness)``; MaMMUT: the class probability).
            max_per_img: detections per image at most.
        """
