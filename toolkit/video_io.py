"""Every ``stride``-th frame of a whole video, in batches, and an mp4 writer: the video input and output of
the inferencers and demos (training samples clips through ``video``'s decode pipeline instead).

:func:`open_video` decodes with decord when it is installed, else PyAV; a file that cannot be opened, has no
video stream, no frame, or breaks part-way raises :class:`VideoReadError` naming the file and the frame.
"""

from __future__ import annotations

import os
import os.path as osp
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = ['VIDEO_EXTENSIONS', 'FrameBatches', 'VideoReadError', 'VideoWriter', 'open_video']

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v')


class VideoReadError(ValueError):
    """A video that cannot be decoded; the message names the file and the problem."""


@dataclass
class FrameBatches:
    """An opened video: its frame rate and the batches ``(frame indices, RGB frames (B, H, W, 3) uint8)``."""

    path: str
    fps: float
    batches: Iterator[tuple[list[int], np.ndarray]]

    def __iter__(self) -> Iterator[tuple[list[int], np.ndarray]]:
        count = 0
        while True:
            try:
                indices, frames = next(self.batches)
            except StopIteration:
                break
            except Exception as err:  # a corrupt stream part-way: decord's DECORDError, PyAV's FFmpegError
                raise VideoReadError(
                    f'video {self.path}: decoding failed after {count} frames ({type(err).__name__}: {err})'
                ) from None
            count += len(indices)
            yield indices, frames
        if count == 0:
            raise VideoReadError(f'video {self.path} has no frames')


def _decord_batches(path: str, stride: int, batch_size: int) -> tuple[float, Iterator[Any]]:
    import decord

    reader = decord.VideoReader(path, num_threads=1)
    total, fps = len(reader), float(reader.get_avg_fps())

    def batches() -> Iterator[tuple[list[int], np.ndarray]]:
        indices = list(range(0, total, stride))
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            frames = reader.get_batch(chunk)
            yield chunk, frames.asnumpy() if hasattr(frames, 'asnumpy') else np.asarray(frames)

    return fps, batches()


def _pyav_batches(path: str, stride: int, batch_size: int) -> tuple[float, Iterator[Any]]:
    import av

    container = av.open(path)
    if not container.streams.video:
        container.close()
        raise VideoReadError(f'video {path} has no video stream')
    stream = container.streams.video[0]
    fps = float(stream.average_rate or 0)

    def batches() -> Iterator[tuple[list[int], np.ndarray]]:
        chunk: list[int] = []
        frames: list[np.ndarray] = []
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index % stride:
                    continue
                chunk.append(index)
                frames.append(frame.to_ndarray(format='rgb24'))
                if len(chunk) == batch_size:
                    yield chunk, np.stack(frames)
                    chunk, frames = [], []
            if chunk:
                yield chunk, np.stack(frames)
        finally:
            container.close()

    return fps, batches()


def open_video(path: str, *, stride: int = 1, batch_size: int = 8) -> FrameBatches:
    """Open ``path`` and iterate over every ``stride``-th frame in batches of ``batch_size`` (decord if it is
    installed, else PyAV); a frame rate the file does not give is taken as 25."""
    if stride < 1 or batch_size < 1:
        raise ValueError(f'stride and batch_size must be >= 1, got {stride} and {batch_size}')
    if not osp.isfile(path):
        raise VideoReadError(f'video {path} does not exist')
    try:
        import decord  # noqa: F401

        opener = _decord_batches
    except ImportError:
        opener = _pyav_batches
    try:
        fps, batches = opener(path, stride, batch_size)
    except VideoReadError:
        raise
    except Exception as err:  # decord's DECORDError, PyAV's FFmpegError subclasses, OSError
        raise VideoReadError(f'video {path} cannot be opened ({type(err).__name__}: {err})') from None
    return FrameBatches(path, fps if fps > 0 else 25.0, batches)


class VideoWriter:
    """An mp4 written frame by frame with PyAV: libx264 (yuv420p) when available, else mpeg4; odd sizes
    are padded by one pixel (4:2:0 needs even ones)."""

    def __init__(self, path: str, fps: float) -> None:
        import av

        self.av = av
        self.codec = 'libx264' if self._can_encode('libx264') else 'mpeg4'
        self.path = path
        self.container = av.open(path, mode='w')
        self.rate = Fraction(fps).limit_denominator(1001)
        self.stream: Any = None

    def _can_encode(self, name: str) -> bool:
        try:
            self.av.codec.Codec(name, 'w')
        except Exception:  # av.codec.codec.UnknownCodecError
            return False
        return True

    def write(self, image_rgb: np.ndarray) -> None:
        height, width = image_rgb.shape[:2]
        pad = ((0, height % 2), (0, width % 2), (0, 0))
        image_rgb = np.pad(image_rgb, pad, mode='edge') if any(p[1] for p in pad) else image_rgb
        if self.stream is None:
            self.stream = self.container.add_stream(self.codec, rate=self.rate)
            self.stream.width, self.stream.height = image_rgb.shape[1], image_rgb.shape[0]
            self.stream.pix_fmt = 'yuv420p'
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(image_rgb), format='rgb24')
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        """Flush and close; a video with no frame written leaves no file."""
        if self.stream is None:
            try:
                self.container.close()
            finally:
                if osp.isfile(self.path):
                    os.remove(self.path)
            return
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
