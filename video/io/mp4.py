"""The frame count of an MP4/MOV (ISO-BMFF) file from its header, without decoding.

The sample count of the first video track (its ``stsz`` box), read with two checks that show a truncated
file: the top-level boxes must fill the file exactly, and the media data (``mdat``) must hold the bytes of
the samples the track lists.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

from video.io.decode import VideoDecodeError

__all__ = ['mp4_frame_count']


def _iter_boxes(buf: bytes, start: int, end: int, path: str) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the ISO-BMFF boxes in ``buf[start:end]``."""
    while start + 8 <= end:
        size, box_type = struct.unpack_from('>I4s', buf, start)
        header = 8
        if size == 1:
            if start + 16 > end:
                raise VideoDecodeError(f'{path}: corrupt header (box {box_type!r} at byte {start} overruns)')
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


def _video_sample_bytes(moov: bytes, stsz: tuple[int, int], count: int, path: str) -> int:
    """Bytes of the ``count`` samples an ``stsz`` box lists (one size for all, or one entry each)."""
    (sample_size,) = struct.unpack_from('>I', moov, stsz[0] + 4)
    if sample_size:
        return int(sample_size) * count
    if stsz[1] - stsz[0] < 12 + 4 * count:
        raise VideoDecodeError(f'{path}: corrupt header (sample size table shorter than {count} entries)')
    return int(np.frombuffer(moov, dtype='>u4', count=count, offset=stsz[0] + 12).sum(dtype=np.int64))


def mp4_frame_count(path: str, file_size: int) -> int | None:
    """Samples in the first video track of an mp4/mov file, or ``None`` if it is not one we can read.

    Two signs of a cut or rewritten file are checked on the way: a top-level box that ends past the end of
    the file, and a video track whose samples need more bytes than all the media data (``mdat``) holds
    (a file cut inside ``mdat`` whose box sizes were made to fit again).
    """
    moov: bytes | None = None
    media_bytes = 0
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
            elif box_type == b'mdat':
                media_bytes += size - header
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
                count = int(struct.unpack_from('>I', moov, box[0] + 8)[0])
                if count <= 0:
                    return None  # 0: fragmented mp4, count the packets
                if name == b'stsz':
                    need = _video_sample_bytes(moov, box, count, path)
                    if need > media_bytes:
                        raise VideoDecodeError(
                            f'{path}: truncated (the header lists {count} frames of {need} bytes, the media '
                            f'data holds {media_bytes} bytes)'
                        )
                return count
        return None
    return None
