"""The video area's user-facing API: :class:`VideoTextInferencer` captions, answers questions about and
retrieves video clips with a trained MaMMUT video model."""

from .video_text_inferencer import (
    VIDEO_EXTENSIONS,
    ClipInput,
    PreparedClip,
    RetrievalResult,
    VideoInputError,
    VideoTextInferencer,
)

__all__ = [
    'VIDEO_EXTENSIONS',
    'ClipInput',
    'PreparedClip',
    'RetrievalResult',
    'VideoInputError',
    'VideoTextInferencer',
]
