"""The inference interface of the image-text models: what :class:`pretrain.apis.ImageTextInferencer` calls.

MaMMUT, ALBEF, BEiT-3 and FIBER inherit :class:`ImageTextModel` beside ``VLBaseModel`` and implement it with
the same methods their own ``predict`` uses, so that an inferencer gives the numbers of the model's
evaluation.
What a model can do depends on its config (a FIBER captioning config has no contrastive heads, a FIBER
pretraining config no captioning pass): the ``supports_*`` properties declare it, and a call the model does
not support raises :class:`TaskNotSupportedError` naming the model type and the reason.

Tensors: ``images`` (B, 3, H, W) are model inputs (after the data preprocessor); embeddings (B, E) are
L2-normalised, so that ``img_emb @ txt_emb.T`` is the cosine similarity the retrieval evaluation ranks with.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = ['ImageTextModel', 'TaskNotSupportedError']


class TaskNotSupportedError(NotImplementedError):
    """A model (as configured) cannot do what was asked: captioning, contrastive embeddings or ITM scores."""


class ImageTextModel(ABC):
    """Mixin of the image-text models: dual-encoder embeddings, optional captions, optional ITM scores.

    Subclasses implement :meth:`encode_image`, :meth:`encode_text` and :meth:`current_logit_scale`, and
    override the ``supports_*`` properties and :meth:`generate` / :meth:`match_scores` where they can.
    """

    @property
    def supports_embedding(self) -> bool:
        """Whether :meth:`encode_image` / :meth:`encode_text` are available (contrastive heads built)."""
        return True

    @property
    def supports_captioning(self) -> bool:
        """Whether :meth:`generate` captions images (a trained captioning pass)."""
        return False

    @property
    def supports_matching(self) -> bool:
        """Whether :meth:`match_scores` scores pairs with an image-text matching (ITM) head."""
        return False

    @abstractmethod
    def encode_image(self, images: Tensor) -> Tensor:
        """``images`` (B, 3, H, W) -> ``img_emb`` (B, E), L2-normalised (the retrieval evaluation's)."""

    @abstractmethod
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """B texts -> ``txt_emb`` (B, E), L2-normalised (the retrieval evaluation's)."""

    @abstractmethod
    def current_logit_scale(self) -> Tensor:
        """The scalar multiplying cosine similarities into contrastive logits (1 / temperature)."""

    def generate(self, images: Tensor, **options: Any) -> list[str]:
        """Captions of ``images`` (B, 3, H, W); ``options`` (``method``, ``beam_size``, ``max_len``...)
        override the config's ``generation``."""
        raise TaskNotSupportedError(f'{type(self).__name__} does not caption images')

    def match_scores(self, images: Tensor, texts: Sequence[str]) -> Tensor:
        """ITM score ``logit(match) - logit(no match)`` (P,) of P pairs ``(images[p], texts[p])``, ``images``
        (P, 3, H, W)."""
        raise TaskNotSupportedError(f'{type(self).__name__} has no image-text matching head')
