"""Transforms for video-text samples: frame sampling, decoding, resizing, flipping and packing.

Frame sampling follows TSN (Wang et al., "Temporal Segment Networks", ECCV 2016, Sec. 3.2): the clip is
cut into ``num_frames`` equal segments and one frame is taken from each, a random one in training
(``mode='random_segment'``) and the centre one at test time (``mode='uniform'``, mmaction2's
``SampleFrames(clip_len=1, num_clips=N, test_mode=True)``). Decoding opens and closes its reader inside the
call (nothing but arrays travels in ``results``), with decord (``get_batch``) or PyAV; PyAV demuxes the
packets once and decodes only the GOPs that hold wanted frames, so both backends return the same frames.

The frame count of an mp4/mov file is read from its header (the ``stsz`` box of the video track), which
also shows a truncated file (its last box ends past the end of the file) without decoding anything; other
containers are opened with PyAV.
"""

from __future__ import annotations

import bisect
import os
import os.path as osp
import random
import re
import struct
from typing import Any

import cv2
import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.logging import MMLogger
from mmengine.structures import BaseDataElement

from toolkit.registry import TRANSFORMS

__all__ = [
    'CenterCropVideo',
    'DecodeVideo',
    'PackVideoTextInputs',
    'RandomFlipVideo',
    'ResizeVideo',
    'SampleFrames',
    'VideoDecodeError',
    'read_frame_count',
]

SIDE_SWAP = {'left': 'right', 'clockwise': 'counterclockwise'}
_INTERPOLATIONS = {
    'nearest': cv2.INTER_NEAREST,
    'bilinear': cv2.INTER_LINEAR,
    'bicubic': cv2.INTER_CUBIC,
    'area': cv2.INTER_AREA,
}


class VideoDecodeError(IOError):
    """A video that cannot be opened or decoded; the message names the file and the reason."""


# ----------------------------------------------------------------------------------------------------------
# Frame count from the container header
# ----------------------------------------------------------------------------------------------------------


def _iter_boxes(buf: bytes, start: int, end: int, path: str):
    """(type, payload start, box end) of the ISO-BMFF boxes in ``buf[start:end]``."""
    while start + 8 <= end:
        size, box_type = struct.unpack_from('>I4s', buf, start)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from('>Q', buf, start + 8)
            header = 16
        elif size == 0:
            size = end - start
        if size < header or start + size > end:
            raise VideoDecodeError(f'{path}: corrupt header (box {box_type!r} at byte {start} overruns)')
        yield box_type, start + header, start + size
        start += size


def _child(buf: bytes, start: int, end: int, box_type: bytes, path: str) -> tuple[int, int] | None:
    for typ, payload, box_end in _iter_boxes(buf, start, end, path):
        if typ == box_type:
            return payload, box_end
    return None


def _mp4_frame_count(path: str, file_size: int) -> int | None:
    """Samples in the first video track of an mp4/mov file, or ``None`` if it is not one we can read."""
    moov: bytes | None = None
    with open(path, 'rb') as f:
        offset, first = 0, True
        while offset < file_size:
            f.seek(offset)
            head = f.read(16)
            if len(head) < 8:
                raise VideoDecodeError(f'{path}: truncated (partial box header at byte {offset})')
            size, box_type = struct.unpack_from('>I4s', head)
            if first and box_type != b'ftyp':
                return None  # not ISO-BMFF: let PyAV probe it
            first = False
            header = 8
            if size == 1:
                if len(head) < 16:
                    raise VideoDecodeError(f'{path}: truncated (partial box header at byte {offset})')
                (size,) = struct.unpack_from('>Q', head, 8)
                header = 16
            elif size == 0:
                size = file_size - offset
            if size < header:
                raise VideoDecodeError(f'{path}: corrupt header (box {box_type!r} of size {size})')
            if offset + size > file_size:
                raise VideoDecodeError(
                    f'{path}: truncated (box {box_type.decode("latin-1")!r} ends at byte {offset + size}, '
                    f'the file has {file_size} bytes)'
                )
            if box_type == b'moov':
                f.seek(offset + header)
                moov = f.read(size - header)
            offset += size
    if moov is None:
        raise VideoDecodeError(f'{path}: no "moov" box (incomplete recording or not a video)')
    for typ, trak, trak_end in _iter_boxes(moov, 0, len(moov), path):
        if typ != b'trak':
            continue
        mdia = _child(moov, trak, trak_end, b'mdia', path)
        hdlr = mdia and _child(moov, *mdia, b'hdlr', path)
        if not mdia or not hdlr or moov[hdlr[0] + 8 : hdlr[0] + 12] != b'vide':
            continue
        minf = _child(moov, *mdia, b'minf', path)
        stbl = minf and _child(moov, *minf, b'stbl', path)
        if not stbl:
            return None
        for name in (b'stsz', b'stz2'):
            box = _child(moov, *stbl, name, path)
            if box and box[1] - box[0] >= 12:
                count = struct.unpack_from('>I', moov, box[0] + 8)[0]
                return int(count) if count > 0 else None  # 0: fragmented mp4, count the packets
        return None
    return None


def read_frame_count(path: str) -> int:
    """Number of frames of the first video stream of ``path``, without decoding.

    mp4/mov files: the sample count of the video track, after checking that the top-level boxes fill the
    file exactly (a truncated file fails here). Other containers: PyAV's stream header, else a count of the
    demuxed packets. Raises :class:`VideoDecodeError` naming the file and the problem.
    """
    if not osp.isfile(path):
        raise VideoDecodeError(f'{path}: video file does not exist')
    file_size = osp.getsize(path)
    if file_size == 0:
        raise VideoDecodeError(f'{path}: empty file')
    count = _mp4_frame_count(path, file_size)
    if count is not None:
        return count
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
        raise VideoDecodeError(f'{path}: cannot open ({type(err).__name__}: {err})') from None
    if count <= 0:
        raise VideoDecodeError(f'{path}: no frames')
    return count


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
    see :func:`read_frame_count`); writes ``frame_inds`` (N,) int64 and ``total_frames``.

    Args:
        num_frames: N, frames per clip.
        mode: ``'uniform'`` or ``'random_segment'``.
        frame_interval: Stride of a dense clip; ``None`` (default) for segment sampling.
    """

    def __init__(self, *, num_frames: int, mode: str = 'uniform', frame_interval: int | None = None) -> None:
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

    def transform(self, results: dict[str, Any]) -> dict[str, Any]:
        total = results.get('total_frames')
        if total is None:
            total = read_frame_count(results['video_path'])
        total = int(total)
        if total < 1:
            raise VideoDecodeError(f'{results.get("video_path", "<unknown>")}: the clip has no frames')
        results['frame_inds'] = self.sample(total)
        results['total_frames'] = total
        return results

    def __repr__(self) -> str:
        return (
            f'{type(self).__name__}(num_frames={self.num_frames}, mode={self.mode!r}, '
            f'frame_interval={self.frame_interval})'
        )


def _decode_decord(path: str, inds: np.ndarray, num_threads: int) -> np.ndarray:
    import decord

    reader = decord.VideoReader(path, num_threads=num_threads)
    try:
        total = len(reader)
        if int(inds.max()) >= total:
            raise VideoDecodeError(f'{path}: frame index {int(inds.max())} beyond the clip ({total} frames)')
        batch = reader.get_batch(inds.tolist())
        # Zero-copy: a numpy view of decord's own buffer through DLPack (``asnumpy()`` copies the clip;
        # the copy was ~2 % of a 224 px clip's decode time). The view keeps the buffer alive.
        return torch.utils.dlpack.from_dlpack(batch.to_dlpack()).numpy()
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
            order = sorted(range(total), key=lambda d: pts[d])
            index_of_pts = {pts[d]: i for i, d in enumerate(order)}
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
                        index = index_of_pts.get(frame.pts)
                        if index in wanted_set and index not in frames:
                            frames[index] = frame.to_ndarray(format='rgb24')
        missing = [i for i in wanted if i not in frames]
        if missing:
            raise VideoDecodeError(f'{path}: frames {missing[:5]} could not be decoded ({total} packets)')
        return np.stack([frames[i] for i in inds.tolist()])


@TRANSFORMS.register_module()
class DecodeVideo(BaseTransform):
    """Decode the frames ``frame_inds`` of ``video_path`` into ``imgs`` (T, H, W, 3) uint8 RGB.

    The reader is opened and closed inside each call. Writes ``imgs``, ``img_shape`` and ``ori_shape``
    (H, W). A missing, empty, truncated or undecodable file, or an index past the clip, raises
    :class:`VideoDecodeError` naming the file (``on_error='raise'``), or, with ``on_error='skip'``, logs a
    warning with the file and a running count and returns ``None``: mmengine's ``BaseDataset`` then
    fetches another sample in training (in test mode it raises). ``num_skipped`` counts the skips of
    this instance (one per data-loader worker process).

    Args:
        backend: ``'decord'`` (``VideoReader.get_batch``) or ``'pyav'``; both give identical frames.
        on_error: ``'raise'`` or ``'skip'``.
        num_threads: Decoder threads per call (1 keeps data-loader workers from fighting over cores).
    """

    def __init__(self, *, backend: str = 'decord', on_error: str = 'raise', num_threads: int = 1) -> None:
        if backend not in ('decord', 'pyav'):
            raise ValueError(f"backend must be 'decord' or 'pyav', got {backend!r}")
        if on_error not in ('raise', 'skip'):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if num_threads < 1:
            raise ValueError(f'num_threads must be >= 1, got {num_threads}')
        self.backend, self.on_error, self.num_threads = backend, on_error, num_threads
        self.num_skipped = 0

    def decode(self, path: str, frame_inds: np.ndarray) -> np.ndarray:
        """Frames (T, H, W, 3) uint8 of ``path`` at ``frame_inds``; raises :class:`VideoDecodeError`."""
        inds = np.asarray(frame_inds, dtype=np.int64).reshape(-1)
        if inds.size == 0:
            raise ValueError(f'{path}: frame_inds is empty')
        if int(inds.min()) < 0:
            raise VideoDecodeError(f'{path}: negative frame index {int(inds.min())}')
        if not osp.isfile(path):
            raise VideoDecodeError(f'{path}: video file does not exist')
        if osp.getsize(path) == 0:
            raise VideoDecodeError(f'{path}: empty file')
        decode = _decode_decord if self.backend == 'decord' else _decode_pyav
        try:
            imgs = decode(path, inds, self.num_threads)
        except VideoDecodeError:
            raise
        except Exception as err:  # decord raises DECORDError/RuntimeError, PyAV FFmpegError subclasses
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise VideoDecodeError(f'{path}: cannot decode with {self.backend} ({reason})') from None
        if imgs.ndim != 4 or imgs.shape[0] != inds.size or imgs.shape[-1] != 3:
            raise VideoDecodeError(f'{path}: decoded array of unexpected shape {imgs.shape}')
        return imgs

    def transform(self, results: dict[str, Any]) -> dict[str, Any] | None:
        path = results['video_path']
        try:
            imgs = self.decode(path, results['frame_inds'])
        except VideoDecodeError as err:
            if self.on_error == 'raise':
                raise
            self.num_skipped += 1
            MMLogger.get_current_instance().warning(
                f'DecodeVideo: skipped {path} ({err}); {self.num_skipped} video(s) skipped so far '
                f'in process {os.getpid()}'
            )
            return None
        results['imgs'] = imgs
        results['img_shape'] = imgs.shape[1:3]
        results['ori_shape'] = imgs.shape[1:3]
        return results

    def __repr__(self) -> str:
        return (
            f'{type(self).__name__}(backend={self.backend!r}, on_error={self.on_error!r}, '
            f'num_threads={self.num_threads})'
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
