"""Decoding frames of a video file in this process, with decord or PyAV, every problem of the file raised
as a :class:`VideoDecodeError` naming it.

A decoder that crashes or hangs on a file is not caught here: :mod:`video.io.sandbox` runs these functions
in a child process for that (``isolation='process'`` of ``DecodeVideo``); with ``isolation='none'`` they run
in the calling process.
"""

from __future__ import annotations

import bisect
import os.path as osp
import re
from typing import Any

import numpy as np

__all__ = [
    'VideoDecodeError',
    'VideoDecodeTimeoutError',
    'VideoDecoderCrashError',
    'check_video_file',
    'count_frames',
    'decode_frames',
]

_DECORD_PREFIX = re.compile(r'^\[[0-9:]+\] \S+:[0-9]+: ')  # "[18:56:59] /src/video/video_reader.cc:151: "
_HEAD_BYTES = 512  # read to recognise files that are not videos
# Magic numbers of files that FFmpeg would open as one-frame "videos" or fail on with a vague message.
_NOT_VIDEO_MAGIC = (
    (b'\xff\xd8\xff', 'a JPEG image'),
    (b'\x89PNG\r\n\x1a\n', 'a PNG image'),
    (b'%PDF-', 'a PDF document'),
    (b'PK\x03\x04', 'a ZIP archive'),
    (b'\x1f\x8b', 'a gzip archive'),
)


class VideoDecodeError(IOError):
    """A video that cannot be opened or decoded; the message names the file and the reason."""


class VideoDecodeTimeoutError(VideoDecodeError):
    """The decoder took longer than the timeout on a file and was killed."""


class VideoDecoderCrashError(VideoDecodeError):
    """The decoder process died (segfault, abort, out of memory) while decoding a file."""


def check_video_file(path: str) -> bytes:
    """Raise :class:`VideoDecodeError` for a missing or empty file or one that is plainly not a video;
    return the first bytes of the file.

    Images and text are named as such: FFmpeg opens a JPEG as a one-frame video, and an HTML error page
    saved as ``.mp4`` by a failed download only gets "Invalid data found when processing input".
    """
    if not osp.isfile(path):
        raise VideoDecodeError(f'{path}: video file does not exist')
    if osp.getsize(path) == 0:
        raise VideoDecodeError(f'{path}: empty file')
    with open(path, 'rb') as f:
        head = f.read(_HEAD_BYTES)
    for magic, what in _NOT_VIDEO_MAGIC:
        if head.startswith(magic):
            raise VideoDecodeError(f'{path}: {what}, not a video')
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError as err:  # a multi-byte character cut at the end of ``head`` is still text
        text = head[: err.start].decode('utf-8') if err.start >= len(head) - 3 else ''
    if text and all(c.isprintable() or c in '\t\n\r' for c in text):
        raise VideoDecodeError(f'{path}: a text file, not a video (starts with {text[:40]!r})')
    return head


def _from_dlpack(capsule: Any) -> np.ndarray:
    """A numpy view of a DLPack capsule (decord's ``to_dlpack``) that keeps the buffer alive: no copy."""

    class _Capsule:
        def __dlpack__(self, **kwargs: Any) -> Any:
            return capsule

        def __dlpack_device__(self) -> tuple[int, int]:
            return (1, 0)  # kDLCPU

    return np.from_dlpack(_Capsule())


def _decode_decord(path: str, inds: np.ndarray, num_threads: int) -> np.ndarray:
    import decord

    reader = decord.VideoReader(path, num_threads=num_threads)
    try:
        total = len(reader)
        if int(inds.max()) >= total:
            raise VideoDecodeError(f'{path}: frame index {int(inds.max())} beyond the clip ({total} frames)')
        # Zero-copy view of decord's buffer (``asnumpy()`` copies the clip: ~2 % of a 224 px decode).
        return _from_dlpack(reader.get_batch(inds.tolist()).to_dlpack())
    finally:
        del reader


def _decode_pyav(path: str, inds: np.ndarray, num_threads: int) -> np.ndarray:
    """Demux every packet once, then decode only from the keyframe before each wanted frame."""
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise VideoDecodeError(f'{path}: no video stream')
        stream = container.streams.video[0]
        stream.thread_type = 'AUTO' if num_threads > 1 else 'SLICE'
        stream.thread_count = num_threads
        packets = [packet for packet in container.demux(stream) if packet.size > 0]
        total = len(packets)
        declared = int(stream.frames or 0)
        if 'mp4' in container.format.name and total < declared:
            # The mp4 index lists every sample: fewer packets means the media data was cut. decord refuses
            # such a file; decoding the first part would also shift the frames SampleFrames meant.
            raise VideoDecodeError(
                f'{path}: the header lists {declared} frames but the file holds {total} (truncated)'
            )
        if int(inds.max()) >= total:
            raise VideoDecodeError(f'{path}: frame index {int(inds.max())} beyond the clip ({total} frames)')
        wanted_set = set(inds.tolist())
        wanted = sorted(wanted_set)
        frames: dict[int, np.ndarray] = {}
        codec = stream.codec_context
        pts = [packet.pts for packet in packets]
        if any(p is None for p in pts):  # no timestamps: decode from the start, counting frames
            index = 0
            for packet in [*packets, None]:
                for frame in codec.decode(packet):
                    if index in wanted_set:
                        frames[index] = frame.to_ndarray(format='rgb24')
                    index += 1
                if len(frames) == len(wanted):
                    break
        else:
            # Presentation index of each packet (frames are indexed in display order, as decord does).
            stamps = [int(p) for p in pts if p is not None]  # all of them, here
            order = sorted(range(total), key=lambda d: stamps[d])
            index_of_pts = {stamps[d]: i for i, d in enumerate(order)}
            keyframes = [d for d, packet in enumerate(packets) if packet.is_keyframe] or [0]
            fed = -1  # last packet given to the decoder
            for want in wanted:
                if want in frames:
                    continue
                position = order[want]
                key = keyframes[max(bisect.bisect_right(keyframes, position) - 1, 0)]
                if key > fed + 1:  # skip the packets between: restart at the keyframe
                    if fed >= 0:
                        codec.flush_buffers()
                    fed = key - 1
                while want not in frames and fed < total:
                    fed += 1  # fed == total: drain the decoder's delayed frames
                    for frame in codec.decode(packets[fed] if fed < total else None):
                        shown = index_of_pts.get(frame.pts) if frame.pts is not None else None
                        if shown is not None and shown in wanted_set and shown not in frames:
                            frames[shown] = frame.to_ndarray(format='rgb24')
        missing = [i for i in wanted if i not in frames]
        if missing:
            raise VideoDecodeError(f'{path}: frames {missing[:5]} could not be decoded ({total} packets)')
        return np.stack([frames[i] for i in inds.tolist()])


def _reason(err: BaseException) -> str:
    """The useful line of a decoder's exception (decord's carry a C++ stack trace before it and a time and
    source location in front of it)."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    return _DECORD_PREFIX.sub('', text.splitlines()[-1])


def decode_frames(
    path: str, frame_inds: np.ndarray | list[int], backend: str, num_threads: int
) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 RGB of ``path`` at ``frame_inds``, in this process.

    Raises :class:`VideoDecodeError` naming the file for every problem of the file (the decoders' own
    exceptions are translated); a crash or hang of the decoder is not caught here: see
    :class:`DecodeSandbox`.
    """
    inds = np.asarray(frame_inds, dtype=np.int64).reshape(-1)
    if inds.size == 0:
        raise ValueError(f'{path}: frame_inds is empty')
    if int(inds.min()) < 0:
        raise VideoDecodeError(f'{path}: negative frame index {int(inds.min())}')
    head = check_video_file(path)
    if backend == 'decord' and head[4:8] != b'ftyp':
        # decord seeks well only in mp4/mov (ISO-BMFF, whose index lists every frame): in H.264 in Matroska
        # (an .mkv, whatever its name) it returned frame 0 for frames 1-7 of a 16-frame clip, silently.
        # PyAV decodes in packet order and is exact in every container.
        backend = 'pyav'
    decode = _decode_decord if backend == 'decord' else _decode_pyav
    try:
        imgs = decode(path, inds, num_threads)
    except VideoDecodeError:
        raise
    except Exception as err:  # decord raises DECORDError/RuntimeError, PyAV FFmpegError subclasses
        raise VideoDecodeError(f'{path}: cannot decode with {backend} ({_reason(err)})') from None
    if imgs.ndim != 4 or imgs.shape[0] != inds.size or imgs.shape[-1] != 3 or imgs.dtype != np.uint8:
        raise VideoDecodeError(f'{path}: decoded array of unexpected shape {imgs.shape} ({imgs.dtype})')
    return imgs


def count_frames(path: str) -> int:
    """Frames of the first video stream of ``path`` as PyAV reads them: the stream header, else the number
    of demuxed packets. In this process; :func:`~video.datasets.transforms.read_frame_count` reads mp4
    headers itself and sends other containers here through the sandbox."""
    check_video_file(path)
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(f'{path}: no video stream')
            stream = container.streams.video[0]
            count = int(stream.frames or 0)
            if count <= 0:
                count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    except VideoDecodeError:
        raise
    except Exception as err:  # PyAV raises FFmpegError subclasses, OSError, ValueError
        raise VideoDecodeError(f'{path}: cannot open ({type(err).__name__}: {_reason(err)})') from None
    if count <= 0:
        raise VideoDecodeError(f'{path}: no frames')
    return count
