"""A corpus of broken video files, written on the spot (never downloaded), and decoder faults for tests.

:func:`write_broken_videos` writes one good clip and one file of each way a video in a real data set goes
bad: an interrupted download or copy (zero bytes, cut inside the media data, index box missing or
damaged, index listing more frames than the file holds), a file in another container than its name says,
a file that is no video at all (an HTML error page, a JPEG, an audio track), and a clip far shorter than
the frames asked of it. Each comes from a real encode of a 16-frame 32 x 32 clip whose frame ``t`` is grey
noise around the level :func:`frame_level` (``t``), so a test can tell which frames it got (the noise
spreads the media data evenly over the frames: a file cut in half keeps about half of them).

FFmpeg bugs that crash or hang on a file cannot be made on demand, so they are simulated: the files of
:func:`write_fault_videos` carry a marker that :func:`inject_fault` acts on (sleep forever, segfault,
abort). It is called only where a test installs it as the decoder sandbox's hook (the environment variable
``video.io.sandbox.TEST_HOOK_ENV`` set to :data:`FAULT_HOOK`); without it the marker files are just
undecodable files.
"""

from __future__ import annotations

import os
import signal
import struct
import time
from pathlib import Path

import numpy as np

__all__ = [
    'BROKEN_KINDS',
    'FAULT_HOOK',
    'FAULT_KINDS',
    'GOOD_FRAMES',
    'frame_level',
    'inject_fault',
    'mp4_boxes',
    'write_broken_videos',
    'write_fault_videos',
]

GOOD_FRAMES = 16
_SIZE = 32
FAULT_HOOK = 'toolkit.testing.broken_video:inject_fault'
# Binary (a NUL first), so that the marker files are not refused as text before they reach the decoder.
_FAULT_MAGIC = b'\x00VLTK-TEST-FAULT:'

# kind -> (file name, what is wrong with it)
BROKEN_KINDS: dict[str, tuple[str, str]] = {
    'good': ('good.mp4', f'a sound {GOOD_FRAMES}-frame H.264 mp4 (index at the end, as encoders write it)'),
    'zero_byte': ('zero_byte.mp4', 'an empty file'),
    'truncated': ('truncated.mp4', 'index first ("faststart"), cut in the middle of the media data'),
    'truncated_tail': ('truncated_tail.mp4', 'index at the end, cut in the middle of the media data'),
    'no_moov': ('no_moov.mp4', 'complete media data, the index ("moov" box) removed'),
    'corrupt_moov': ('corrupt_moov.mp4', 'the index overwritten with random bytes'),
    'header_claims_more': (
        'header_claims_more.mp4',
        f'boxes consistent, but the index lists {GOOD_FRAMES} frames and the media data holds half',
    ),
    'mkv_named_mp4': ('mkv_named_mp4.mp4', 'a Matroska file named .mp4 (decodable: FFmpeg probes content)'),
    'mp4_named_avi': ('mp4_named_avi.avi', 'an mp4 named .avi (decodable)'),
    'audio_only': ('audio_only.mp4', 'a WAV audio file named .mp4: no video stream'),
    'html_named_mp4': ('html_named_mp4.mp4', 'an HTML error page saved as .mp4'),
    'jpeg_named_mp4': ('jpeg_named_mp4.mp4', 'a JPEG image named .mp4'),
    'garbage': ('garbage.mp4', 'random bytes'),
    'short': ('short.mp4', 'a sound 2-frame clip'),
}
FAULT_KINDS = ('hang', 'segfault', 'abort')


def frame_level(t: int) -> int:
    """Grey level of frame ``t`` of the generated clips (steps of 12: far apart after H.264)."""
    return 24 + 12 * t


def _encode(path: Path, num_frames: int, *, fmt: str | None = None, faststart: bool = False) -> None:
    import av  # local import: only writing the corpus needs PyAV

    options = {'movflags': 'faststart'} if faststart else {}
    rng = np.random.default_rng(num_frames)
    with av.open(str(path), mode='w', format=fmt, options=options) as container:
        stream = container.add_stream('libx264', rate=8)
        stream.width, stream.height, stream.pix_fmt = _SIZE, _SIZE, 'yuv420p'
        stream.options = {'crf': '18', 'preset': 'veryfast', 'bf': '0', 'threads': '1'}
        for t in range(num_frames):
            noise = rng.integers(-8, 9, (_SIZE, _SIZE, 1))
            rgb = np.repeat(frame_level(t) + noise, 3, axis=2).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_wav(path: Path) -> None:
    import av

    with av.open(str(path), mode='w', format='wav') as container:
        stream = container.add_stream('pcm_s16le', rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format='s16', layout='mono')
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def mp4_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """Top-level ISO-BMFF boxes of ``data`` as (type, offset, size) (32-bit sizes, as PyAV writes them)."""
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, box_type = struct.unpack_from('>I4s', data, offset)
        boxes.append((box_type, offset, size))
        offset += max(size, 8)
    return boxes


def _box(data: bytes, box_type: bytes) -> tuple[int, int]:
    return next((offset, size) for typ, offset, size in mp4_boxes(data) if typ == box_type)


def write_broken_videos(folder: str | os.PathLike[str], *, seed: int = 0) -> dict[str, Path]:
    """Write every kind of :data:`BROKEN_KINDS` into ``folder``; return ``{kind: path}``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, (name, _) in BROKEN_KINDS.items()}
    rng = np.random.default_rng(seed)

    _encode(paths['good'], GOOD_FRAMES)
    good = paths['good'].read_bytes()
    faststart = out / '.faststart.tmp.mp4'
    _encode(faststart, GOOD_FRAMES, faststart=True)
    fast = faststart.read_bytes()
    faststart.unlink()

    paths['zero_byte'].write_bytes(b'')
    mdat, mdat_size = _box(fast, b'mdat')
    paths['truncated'].write_bytes(fast[: mdat + mdat_size // 2])
    tail_mdat, tail_size = _box(good, b'mdat')
    paths['truncated_tail'].write_bytes(good[: tail_mdat + tail_size // 2])
    moov, moov_size = _box(good, b'moov')
    paths['no_moov'].write_bytes(good[:moov] + good[moov + moov_size :])
    damaged = bytearray(good)
    damaged[moov + 8 : moov + moov_size] = rng.integers(0, 256, moov_size - 8, dtype=np.uint8).tobytes()
    paths['corrupt_moov'].write_bytes(bytes(damaged))
    # Half the media data, with the mdat size made to match: every box fits, the index does not.
    keep = (mdat_size - 8) // 2
    claims = bytearray(fast[: mdat + 8 + keep])
    struct.pack_into('>I', claims, mdat, 8 + keep)
    paths['header_claims_more'].write_bytes(bytes(claims))

    _encode(paths['mkv_named_mp4'], GOOD_FRAMES, fmt='matroska')
    paths['mp4_named_avi'].write_bytes(good)
    _write_wav(paths['audio_only'])
    paths['html_named_mp4'].write_text(
        '<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>\n'
        '<body><h1>403 Forbidden</h1><p>Request could not be satisfied.</p></body></html>\n'
    )
    import cv2  # local import, as av

    ok, jpeg = cv2.imencode('.jpg', np.full((_SIZE, _SIZE, 3), 128, dtype=np.uint8))
    assert ok
    paths['jpeg_named_mp4'].write_bytes(jpeg.tobytes())
    paths['garbage'].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _encode(paths['short'], 2)
    return paths


def write_fault_videos(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Write one marker file per :data:`FAULT_KINDS` into ``folder``; return ``{kind: path}``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in FAULT_KINDS:
        paths[kind] = out / f'fault_{kind}.mp4'
        paths[kind].write_bytes(_FAULT_MAGIC + kind.encode() + b'\n')
    return paths


def inject_fault(path: str) -> None:
    """Test hook of the decoder sandbox's child: act on a fault marker file, ignore every other file.

    ``hang`` sleeps forever and ignores SIGTERM (only SIGKILL ends it), ``segfault`` reads address 0,
    ``abort`` calls ``abort()`` (as a failed C assertion does).
    """
    try:
        with open(path, 'rb') as f:
            head = f.read(64)
    except OSError:
        return
    if not head.startswith(_FAULT_MAGIC):
        return
    kind = head[len(_FAULT_MAGIC) :].split(b'\n')[0].decode()
    if kind == 'hang':
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(3600)
    elif kind == 'segfault':
        import ctypes

        ctypes.string_at(0)
    elif kind == 'abort':
        os.abort()
    else:
        raise ValueError(f'{path}: unknown fault {kind!r}')
