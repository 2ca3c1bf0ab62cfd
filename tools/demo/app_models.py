"""The models behind ``tools/demo/app.py``, each loaded once: an open-vocabulary detector (FIBER or MaMMUT,
through :class:`detection.apis.OVDetInferencer`) and a MaMMUT video model that captions a clip and answers a
question about it. Inputs are the bytes or files of uploads and bundled samples; every problem a person can
cause raises :class:`InputError` with a message for the page and an HTTP status. :class:`ModelGate` lets one
model call run at a time.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import cv2
import mmcv
import numpy as np

from detection.apis import Detection, DetectionDrawer, DetectionInputError, OVDetInferencer, parse_names
from toolkit.transforms import image_header
from video.apis import VideoInputError, VideoTextInferencer

__all__ = [
    'DetectionResult',
    'DetectionService',
    'InputError',
    'ModelGate',
    'ServerBusy',
    'VideoResult',
    'VideoService',
]

T = TypeVar('T')


class InputError(ValueError):
    """A problem with what a person sent: the message is shown on the page, with HTTP ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ServerBusy(RuntimeError):
    """The model is taken by other requests for longer than a request may wait (HTTP 503)."""


class ModelGate:
    """One model call at a time per process: callers queue on a lock; at most ``max_waiting`` wait, each at
    most ``timeout`` seconds, after which :class:`ServerBusy` is raised (memory and threads stay bounded
    whatever the number of requests)."""

    def __init__(self, *, max_waiting: int = 4, timeout: float = 120.0) -> None:
        if max_waiting < 0 or timeout <= 0:
            raise ValueError(f'need max_waiting >= 0 and timeout > 0, got {max_waiting}, {timeout}')
        self.max_waiting, self.timeout = max_waiting, timeout
        self._model = threading.Lock()
        self._count = threading.Lock()
        self.waiting = 0
        self.calls = 0

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._count:
            if self.waiting >= self.max_waiting and self._model.locked():
                raise ServerBusy(f'the model is busy and {self.waiting} requests are waiting; try again soon')
            self.waiting += 1
        try:
            acquired = self._model.acquire(timeout=self.timeout)
        finally:
            with self._count:
                self.waiting -= 1
        if not acquired:
            raise ServerBusy(f'the model stayed busy for {self.timeout:g} s; try again soon')
        try:
            self.calls += 1
            return fn(*args)
        finally:
            self._model.release()


def _upscaled(image_rgb: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """The image resized so that its longer side is at least ``side`` (small images drawn legibly), and the
    factor."""
    height, width = image_rgb.shape[:2]
    scale = side / max(height, width)
    if scale <= 1.0:
        return image_rgb, 1.0
    size = (round(width * scale), round(height * scale))
    return cv2.resize(image_rgb, size, interpolation=cv2.INTER_CUBIC), scale


def encode_image(image_rgb: np.ndarray, ext: str = '.png') -> bytes:
    """PNG (or JPEG) bytes of an RGB image."""
    ok, buffer = cv2.imencode(ext, np.ascontiguousarray(image_rgb[..., ::-1]))
    if not ok:
        raise RuntimeError(f'OpenCV could not encode a {image_rgb.shape} image as {ext}')
    return buffer.tobytes()


@dataclasses.dataclass
class DetectionResult:
    name: str  # the upload's file name or the sample's
    width: int
    height: int
    names: tuple[str, ...]
    threshold: float
    detections: list[Detection]  # best first, boxes in the image's pixels
    drawn_png: bytes  # the boxes drawn on the image (upscaled when small)
    seconds: float


class DetectionService:
    """An open-vocabulary detector loaded once; names and threshold come with each request.

    Args:
        config, checkpoint: the detector (FIBER or MaMMUT) and its weights (``weights_only`` loading).
        names: the vocabulary checked at start-up (bad names or a bad model fail before serving).
        device: torch device.
        max_image_side: images with a longer side are refused (read from the header, before decoding).
        max_names: names per request.
        display_side: small images are drawn upscaled to this longer side.
    """

    def __init__(
        self,
        *,
        config: str,
        checkpoint: str,
        names: Sequence[str],
        device: str = 'cpu',
        max_image_side: int = 4096,
        max_names: int = 64,
        display_side: int = 640,
    ) -> None:
        self.inferencer = OVDetInferencer(config, checkpoint, device=device, vocab_cache_size=64)
        self.inferencer.vocabulary(names)  # bad names or a bad model fail before serving
        self.drawer = DetectionDrawer(names)
        self.max_image_side, self.max_names, self.display_side = max_image_side, max_names, display_side

    def parse_names(self, text: str) -> tuple[str, ...]:
        try:
            names = parse_names(text)
        except DetectionInputError:
            raise InputError(
                'Type at least one category name; separate names with " . " '
                '(e.g. "red circle . blue square").'
            ) from None
        if len(names) > self.max_names:
            raise InputError(f'{len(names)} names given; at most {self.max_names} are allowed per request.')
        if too_long := [name for name in names if len(name) > 100]:
            raise InputError(f'names are at most 100 characters long: {too_long[0][:40]!r}... is longer.')
        return names

    def check_image(self, data: bytes, name: str) -> tuple[int, int]:
        """(width, height) from the header; :class:`InputError` for files that are not images or too big."""
        try:
            _, width, height = image_header(data)
        except ValueError as err:
            raise InputError(f'{name} is not a readable image: {err}.') from None
        if max(width, height) > self.max_image_side:
            raise InputError(
                f'{name} is {width} x {height} pixels; the longest side allowed is {self.max_image_side} '
                'pixels (--max-image-side).',
                status=413,
            )
        if min(width, height) < 1:
            raise InputError(f'{name} has no pixels ({width} x {height}).')
        return width, height

    def __call__(self, data: bytes, name: str, names_text: str, threshold: float) -> DetectionResult:
        start = time.perf_counter()
        names = self.parse_names(names_text)
        self.check_image(data, name)
        try:
            image_bgr = self.inferencer.decode_image(data, name)
            vocabulary = self.inferencer.vocabulary(names)  # the inferencer's bounded cache
        except DetectionInputError as err:
            raise InputError(f'{err}.') from None
        detections = self.inferencer.detect([image_bgr], vocabulary, score_thr=threshold)[0]
        self.drawer.set_names(names)
        image_rgb, scale = _upscaled(mmcv.bgr2rgb(image_bgr), self.display_side)
        scaled = [dataclasses.replace(d, bbox=tuple(v * scale for v in d.bbox)) for d in detections]
        drawn = self.drawer(image_rgb, scaled)
        return DetectionResult(
            name=name,
            width=int(image_bgr.shape[1]),
            height=int(image_bgr.shape[0]),
            names=names,
            threshold=threshold,
            detections=detections,
            drawn_png=encode_image(drawn),
            seconds=time.perf_counter() - start,
        )


@dataclasses.dataclass
class VideoResult:
    name: str
    caption: str
    question: str
    answer: str | None  # None when no question was asked
    frames_png: list[bytes]  # the sampled frames the model saw, after resizing
    frame_inds: list[int]
    total_frames: int
    seconds: float


class VideoService:
    """The web app's MaMMUT video model (:class:`video.apis.VideoTextInferencer`, loaded once): a clip in, a
    caption (the config's ``generation``) and a greedy answer to a question out, from one encoder pass, with
    the sampled frames the model saw. The inferencer's :class:`VideoInputError` becomes an
    :class:`InputError` for the page, the upload's name in place of its temporary path.
    """

    def __init__(self, *, config: str, checkpoint: str, device: str = 'cpu', max_question_chars: int = 200):
        self.inferencer = VideoTextInferencer(config, checkpoint, device=device)
        self.max_question_chars = max_question_chars

    def __call__(self, path: str, name: str, question: str) -> VideoResult:
        start = time.perf_counter()
        question = ' '.join(question.split())
        if len(question) > self.max_question_chars:
            raise InputError(
                f'the question has {len(question)} characters; at most {self.max_question_chars}.'
            )
        try:
            clip = self.inferencer.prepare(path)[0]
            if question:
                captions, answers = self.inferencer.caption_and_answer([clip], question)
                answer: str | None = answers[0]
            else:
                captions, answer = self.inferencer.caption([clip]), None
        except VideoInputError as err:
            raise InputError(f'{name} is not a readable video: {err.reason.replace(path, name)}.') from None
        return VideoResult(
            name=name,
            caption=captions[0],
            question=question,
            answer=answer,
            frames_png=[encode_image(frame) for frame in clip.frames],
            frame_inds=[int(i) for i in clip.frame_inds],
            total_frames=clip.total_frames,
            seconds=time.perf_counter() - start,
        )
