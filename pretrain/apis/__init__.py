"""The user-facing API of ``pretrain``: :class:`ImageTextInferencer` (embeddings, captions, zero-shot labels
and retrieval with MaMMUT, ALBEF, BEiT-3 and FIBER)."""

from .image_text_inferencer import (
    ImageTextInferencer,
    ImageTextInputError,
    RetrievalResult,
    TaskNotSupportedError,
)

__all__ = ['ImageTextInferencer', 'ImageTextInputError', 'RetrievalResult', 'TaskNotSupportedError']
