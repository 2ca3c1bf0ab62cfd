"""Transforms for video-text samples: frame sampling, decoding, resizing, flipping and packing.

Frame sampling follows TSN (Wang et al., "Temporal Segment Networks", ECCV 2016, Sec. 3.2): the clip is
cut into ``num_frames`` equal segments and one frame is taken from each, a random one in training
(``mode='random_segment'``) and the centre one at test time (``mode='uniform'``, mmaction2's
``SampleFrames(clip_len=1, num_clips=N, test_mode=True)``). Decoding opens and closes its reader inside the
call (nothing but arrays travels in ``results``), with decord (``get_batch``) or PyAV; PyAV demuxes the
packets once and decodes only the GOPs that hold wanted frames, so both backends return the same frames.
By default the decoder runs in a child process with a timeout per clip (``isolation='process'``, see
:mod:`video.io.sandbox`): a file that crashes or hangs FFmpeg costs one clip, not the run.

The frame count of an mp4/mov file is read from its header (:mod:`video.io.mp4`: the ``stsz`` box of the
video track), which also shows a truncated file (its last box ends past the end of the file, or its index
lists more sample bytes than its media data holds) without decoding anything; other containers are opened
with PyAV, in the same sandbox.
"""

from __future__ import annotations

import os.path as osp
import random
import re
from typing import Any

import cv2
import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.structures import BaseDataElement

from toolkit.registry import TRANSFORMS
from toolkit.skips import record_skip
from video.io.decode import (
    VideoDecodeError,
    VideoDecoderCrashError,
    VideoDecodeTimeoutError,
    check_video_file,
    count_frames,
    decode_frames,
)
from video.io.mp4 import mp4_frame_count
from video.io.sandbox import DEFAULT_TIMEOUT, get_sandbox

__all__ = [
    'CenterCropVideo',
    'DecodeVideo',
    'PackVideoTextInputs',
    'RandomFlipVideo',
    'ResizeVideo',
    'SampleFrames',
    'VideoDecodeError',
    'VideoDecodeTimeoutError',
    'VideoDecoderCrashError',
    'read_frame_count',
]

SIDE_SWAP = {'left': 'right', 'clockwise': 'counterclockwise'}
_INTERPOLATIONS = {
    'nearest': cv2.INTER_NEAREST,
    'bilinear': cv2.INTER_LINEAR,
    'bicubic': cv2.INTER_CUBIC,
    'area': cv2.INTER_AREA,
}


ISOLATIONS = ('process', 'none')


# ----------------------------------------------------------------------------------------------------------
# Frame count from the container header
# ----------------------------------------------------------------------------------------------------------


def read_frame_count(path: str, *, isolation: str = 'process', timeout: float = DEFAULT_TIMEOUT) -> int:
    """Number of frames of the first video stream of ``path``, without decoding.

    mp4/mov files: the sample count of the video track, read here, after checking that the top-level boxes
    fill the file exactly and that the media data can hold the listed samples (a truncated file fails
    here). Other containers: PyAV's stream header, else a count of the demuxed packets, in the decoder
    sandbox with ``timeout`` seconds (``isolation='process'``) or in this process (``'none'``). Raises
    :class:`VideoDecodeError` naming the file and the problem.
    """
    if isolation not in ISOLATIONS:
        raise ValueError(f'isolation must be one of {ISOLATIONS}, got {isolation!r}')
    check_video_file(path)
    count = mp4_frame_count(path, osp.getsize(path))
    if count is not None:
        return count
    if isolation == 'process':
        return get_sandbox().count_frames(path, timeout=timeout)
    return count_frames(path)


# ----------------------------------------------------------------------------------------------------------
# Sampling and decoding
# ----------------------------------------------------------------------------------------------------------


@TRANSFORMS.register_module()
class SampleFrames(BaseTransform):
    """Choose ``num_frames`` frame indices of a clip (TSN segment sampling).

    ``mode='uniform'`` (test): the centre frame ``floor((i + 0.5) * T / N)`` of each of N equal segments.
    ``mode='random_segment'`` (train): a uniformly random frame inside each segment, drawn with numpy's
    global RNG (seeded by mmengine's ``randomness`` and per data-loader worker).
    With ``frame_interval`` set, N frames ``frame_interval`` apart form one dense clip instead: centred in
    the video (uniform) or at a random start (random_segment).
    Clips shorter than needed repeat frames: the indices stay sorted and inside the clip.

    Reads ``video_path`` and, when present, ``total_frames`` (else the count is read from the file header,
    see :func:`read_frame_count`); writes ``frame_inds`` (N,) int64 and ``total_frames``. A file whose
    count cannot be read raises :class:`VideoDecodeError`, or with ``on_error='skip'`` is recorded in the
    skip ledger and gives ``None``, as :class:`DecodeVideo` does (the pre-flight check of the video data
    sets reads every count beforehand; this matters with ``check_files=False``).

    Args:
        num_frames: N, frames per clip.
        mode: ``'uniform'`` or ``'random_segment'``.
        frame_interval: Stride of a dense clip; ``None`` (default) for segment sampling.
        on_error: ``'raise'`` or ``'skip'``.
    """

    def __init__(
        self,
        *,
        num_frames: int,
        mode: str = 'uniform',
        frame_interval: int | None = None,
        on_error: str = 'raise',
    ) -> None:
        if on_error not in ('raise', 'skip'):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        if num_frames < 1:
            raise ValueError(f'num_frames must be >= 1, got {num_frames}')
        if mode not in ('uniform', 'random_segment'):
            raise ValueError(f"mode must be 'uniform' or 'random_segment', got {mode!r}")
        if frame_interval is not None and frame_interval < 1:
            raise ValueError(f'frame_interval must be >= 1 or None, got {frame_interval}')
        self.num_frames, self.mode, self.frame_interval = num_frames, mode, frame_interval

    def sample(self, total_frames: int) -> np.ndarray:
        """Frame indices (N,) int64 for a clip of ``total_frames`` frames."""
        n, t = self.num_frames, total_frames
        if self.frame_interval is not None:
            span = (n - 1) * self.frame_interval + 1
            if self.mode == 'uniform':
                start = max(t - span, 0) // 2
            else:
                start = int(np.random.randint(0, max(t - span, 0) + 1))
            inds = start + np.arange(n, dtype=np.int64) * self.frame_interval
            return np.minimum(inds, t - 1)
        if self.mode == 'uniform':
            return ((np.arange(n, dtype=np.int64) * 2 + 1) * t) // (2 * n)
        starts = (np.arange(n, dtype=np.int64) * t) // n
        ends = np.maximum((np.arange(1, n + 1, dtype=np.int64) * t) // n, starts + 1)
        inds = np.random.randint(starts, ends).astype(np.int64)
        return np.minimum(inds, t - 1)

    def transform(self, results: dict[str, Any]) -> dict[str, Any] | None:
        path = results.get('video_path', '<unknown>')
        try:
            total = results.get('total_frames')
            if total is None:
                total = read_frame_count(path)
            total = int(total)
            if total < 1:
                raise VideoDecodeError(f'{path}: the clip has no frames')
        except VideoDecodeError as err:
            if self.on_error == 'raise':
                raise
            _record_video_skip(path, err)
            return None
        results['frame_inds'] = self.sample(total)
        results['total_frames'] = total
        return results

    def __repr__(self) -> str:
        return (
            f'{type(self).__name__}(num_frames={self.num_frames}, mode={self.mode!r}, '
            f'frame_interval={self.frame_interval}, on_error={self.on_error!r})'
        )


def _record_video_skip(path: str, err: VideoDecodeError) -> None:
    """One skipped clip in the ledger: the file as ``source``, the message without its path as ``reason``
    and the error class (a timeout and a crash are told apart from a bad file)."""
    message = str(err)
    reason = message[len(path) + 2 :] if message.startswith(f'{path}: ') else message
    record_skip('video', path, reason, error=type(err).__name__)


@TRANSFORMS.register_module()
class DecodeVideo(BaseTransform):
    """Decode the frames ``frame_inds`` of ``video_path`` into ``imgs`` (T, H, W, 3) uint8 RGB.

    The reader is opened and closed inside each call. Writes ``imgs``, ``img_shape`` and ``ori_shape``
    (H, W). A missing, empty, truncated or undecodable file, a file that is not a video, or an index past
    the clip raises :class:`VideoDecodeError` naming the file (``on_error='raise'``); with
    ``on_error='skip'`` the clip is recorded in the skip ledger (:func:`toolkit.skips.record_skip`, counted
    across data-loader workers and processes) and ``None`` is returned: mmengine's ``BaseDataset`` then
    fetches another sample in training (in test mode it raises). ``num_skipped`` counts the skips of
    this instance (one per data-loader worker process).

    With ``isolation='process'`` (default) the decoder runs in a child process of each (worker) process
    (:mod:`video.io.sandbox`): a decoder that crashes on a file raises
    :class:`VideoDecoderCrashError`, one that takes longer than ``timeout`` seconds is killed and raises
    :class:`VideoDecodeTimeoutError`, both subclasses of :class:`VideoDecodeError` under the same
    ``on_error`` policy; the next clip gets a fresh decoder. The cost, measured on a loaded 2-core machine:
    a round trip of about 0.1 ms plus two copies of the clip through shared memory (0.3-0.6 ms for
    32 x 224 x 224, 1-2 ms for 32 x 240 x 320) against 25-150 ms of decoding such clips on one core, so
    1-3 %, within the timing noise; hence the default. ``'none'`` decodes in this process, unprotected.

    Args:
        backend: ``'decord'`` (``VideoReader.get_batch``) or ``'pyav'``; both give identical frames. Files
            that are not mp4/mov go to PyAV whatever the backend: decord returns wrong frames from Matroska.
        on_error: ``'raise'`` or ``'skip'``.
        num_threads: Decoder threads per call (1 keeps data-loader workers from fighting over cores).
        isolation: ``'process'`` or ``'none'``.
        timeout: Seconds one clip may take in the decoder process (``isolation='process'`` only).
    """

    def __init__(
        self,
        *,
        backend: str = 'decord',
        on_error: str = 'raise',
        num_threads: int = 1,
        isolation: str = 'process',
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if backend not in ('decord', 'pyav'):
            raise ValueError(f"backend must be 'decord' or 'pyav', got {backend!r}")
        if on_error not in ('raise', 'skip'):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if num_threads < 1:
            raise ValueError(f'num_threads must be >= 1, got {num_threads}')
        if isolation not in ISOLATIONS:
            raise ValueError(f'isolation must be one of {ISOLATIONS}, got {isolation!r}')
        if not timeout > 0:
            raise ValueError(f'timeout must be a positive number of seconds, got {timeout!r}')
        self.backend, self.on_error, self.num_threads = backend, on_error, num_threads
        self.isolation, self.timeout = isolation, float(timeout)
        self.num_skipped = 0

    def decode(self, path: str, frame_inds: np.ndarray) -> np.ndarray:
        """Frames (T, H, W, 3) uint8 of ``path`` at ``frame_inds``; raises :class:`VideoDecodeError`."""
        if self.isolation == 'none':
            return decode_frames(path, frame_inds, self.backend, self.num_threads)
        return get_sandbox().decode(
            path, frame_inds, backend=self.backend, num_threads=self.num_threads, timeout=self.timeout
        )

    def transform(self, results: dict[str, Any]) -> dict[str, Any] | None:
        path = results['video_path']
        try:
            imgs = self.decode(path, results['frame_inds'])
        except VideoDecodeError as err:
            if self.on_error == 'raise':
                raise
            self.num_skipped += 1
            _record_video_skip(path, err)
            return None
        results['imgs'] = imgs
        results['img_shape'] = imgs.shape[1:3]
        results['ori_shape'] = imgs.shape[1:3]
        return results

    def __repr__(self) -> str:
        return (
            f'{type(self).__name__}(backend={self.backend!r}, on_error={self.on_error!r}, '
            f'num_threads={self.num_threads}, isolation={self.isolation!r}, timeout={self.timeout:g})'
        )


# ----------------------------------------------------------------------------------------------------------
# Spatial transforms
# ----------------------------------------------------------------------------------------------------------


def _pair(size: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(int(v) < 1 for v in pair):
        raise ValueError(f'{name} must be a positive int or (W, H), got {size!r}')
    return int(pair[0]), int(pair[1])


@TRANSFORMS.register_module()
class ResizeVideo(BaseTransform):
    """Resize every frame of ``imgs`` (T, H, W, C) with OpenCV.

    Args:
        scale: Target (W, H), or an int for (S, S). With ``keep_ratio``: an int is the short side; a pair
            bounds the long and the short side (as ``mmcv.imrescale``: the largest size inside both).
        keep_ratio: Keep the aspect ratio.
        interpolation: ``'nearest'``, ``'bilinear'``, ``'bicubic'`` or ``'area'``.
    """

    def __init__(
        self, *, scale: int | tuple[int, int], keep_ratio: bool = False, interpolation: str = 'bilinear'
    ) -> None:
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f'interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}')
        self.scale = scale if isinstance(scale, int) else _pair(scale, 'scale')
        if isinstance(scale, int) and scale < 1:
            raise ValueError(f'scale must be positive, got {scale}')
        self.keep_ratio, self.interpolation = keep_ratio, interpolation

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """Output (W, H) for a frame of ``height`` x ``width``."""
        if not self.keep_ratio:
            return _pair(self.scale, 'scale')
        if isinstance(self.scale, int):
            factor = self.scale / min(height, width)
        else:
            long_edge, short_edge = max(self.scale), min(self.scale)
            factor = min(long_edge / max(height, width), short_edge / min(height, width))
        return max(1, int(width * factor + 0.5)), max(1, int(height * factor + 0.5))

    def transform(self, results: dict[str, Any]) -> dict[str, Any]:
        imgs = results['imgs']
        height, width = imgs.shape[1:3]
        new_w, new_h = self.target_size(height, width)
        if (new_w, new_h) != (width, height):
            flag = _INTERPOLATIONS[self.interpolation]
            out = np.empty((imgs.shape[0], new_h, new_w, *imgs.shape[3:]), dtype=imgs.dtype)
            for t, frame in enumerate(imgs):
                out[t] = cv2.resize(frame, (new_w, new_h), interpolation=flag).reshape(out.shape[1:])
            results['imgs'] = out
        results['img_shape'] = (new_h, new_w)
        results['scale_factor'] = (new_w / width, new_h / height)
        return results

    def __repr__(self) -> str:
        return (
            f'{type(self).__name__}(scale={self.scale}, keep_ratio={self.keep_ratio}, '
            f'interpolation={self.interpolation!r})'
        )


@TRANSFORMS.register_module()
class CenterCropVideo(BaseTransform):
    """Crop the centre (W, H) of every frame of ``imgs`` (T, H, W, C); ``size`` int means square."""

    def __init__(self, *, size: int | tuple[int, int]) -> None:
        self.size = _pair(size, 'size')

    def transform(self, results: dict[str, Any]) -> dict[str, Any]:
        imgs = results['imgs']
        height, width = imgs.shape[1:3]
        crop_w, crop_h = self.size
        if crop_w > width or crop_h > height:
            raise ValueError(
                f'{results.get("video_path", "video")}: crop {crop_w}x{crop_h} larger than the frames '
                f'({width}x{height}); resize first'
            )
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        results['imgs'] = np.ascontiguousarray(imgs[:, top : top + crop_h, left : left + crop_w])
        results['img_shape'] = (crop_h, crop_w)
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(size={self.size})'


@TRANSFORMS.register_module()
class RandomFlipVideo(BaseTransform):
    """Flip every frame horizontally and swap the words that name a side or a sense of rotation.

    A mirrored video shows "moves left" as "moves right" and a clockwise turn as a counterclockwise one;
    swapping those words (both ways) in ``text``, ``captions``, ``question`` and ``answer`` keeps the text
    true. Only use it where every side-dependent word is listed in ``swap``.

    Args:
        prob: Probability of flipping (Python's seeded ``random``).
        swap: Word pairs exchanged (both directions); default ``left``/``right`` and
            ``clockwise``/``counterclockwise``.
    """

    def __init__(self, *, prob: float = 0.5, swap: dict[str, str] | None = None) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f'prob must be in [0, 1], got {prob}')
        self.prob = prob
        pairs = dict(SIDE_SWAP if swap is None else swap)
        self.swap = {**pairs, **{v: k for k, v in pairs.items()}}
        self.pattern = (
            re.compile(r'\b(' + '|'.join(map(re.escape, self.swap)) + r')\b') if self.swap else None
        )

    def swap_words(self, text: str) -> str:
        return self.pattern.sub(lambda m: self.swap[m.group(1)], text) if self.pattern else text

    def transform(self, results: dict[str, Any]) -> dict[str, Any]:
        if random.random() >= self.prob:
            return results
        results['imgs'] = np.ascontiguousarray(results['imgs'][:, :, ::-1])
        for key in ('text', 'question', 'answer'):
            value = results.get(key)
            if isinstance(value, str):
                results[key] = self.swap_words(value)
            elif isinstance(value, list | tuple):  # all the questions of a clip
                results[key] = [self.swap_words(str(v)) for v in value]
        if 'captions' in results:
            results['captions'] = [self.swap_words(c) for c in results['captions']]
        results['flipped'] = True
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(prob={self.prob}, swap={self.swap})'


@TRANSFORMS.register_module()
class PackVideoTextInputs(BaseTransform):
    """Pack ``imgs`` (T, H, W, C) uint8 into ``inputs`` (C, T, H, W) and the text into a data sample.

    The data sample carries, when present: ``text`` (the training caption), ``gt_captions`` (from
    ``captions``), ``question``, ``gt_answer`` (from ``answer``), ``question_id``, ``question_type``, and
    the meta keys.
    """

    def __init__(
        self,
        *,
        meta_keys: tuple[str, ...] = (
            'img_id',
            'video_id',
            'video_path',
            'frame_inds',
            'ori_shape',
            'img_shape',
        ),
    ) -> None:
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict[str, Any]) -> dict[str, Any]:
        imgs = results['imgs']
        if imgs.ndim == 3:
            imgs = imgs[..., None]
        if imgs.ndim != 4:
            raise ValueError(f'imgs must be (T, H, W, C), got shape {imgs.shape}')
        inputs = torch.from_numpy(np.ascontiguousarray(imgs.transpose(3, 0, 1, 2)))
        sample = BaseDataElement(metainfo={k: results[k] for k in self.meta_keys if k in results})
        for src, dst in (
            ('text', 'text'),
            ('question', 'question'),
            ('answer', 'gt_answer'),
            ('question_id', 'question_id'),
            ('question_type', 'question_type'),
        ):
            if src in results:
                sample.set_field(results[src], dst)
        if 'captions' in results:
            sample.gt_captions = list(results['captions'])
        return dict(inputs=inputs, data_samples=sample)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(meta_keys={self.meta_keys})'
