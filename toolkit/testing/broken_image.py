"""A corpus of broken image files, generated (never downloaded) for the tests of safe image loading.

Each case is one way a file in a real image folder goes wrong: a download cut short (truncated JPEG or
PNG), bytes damaged on disk (a corrupt PNG fails its CRC; a JPEG whose headers are garbage), a wrong
extension (content decides: a PNG named ``.jpg`` is a good image, a text file named ``.jpg`` is not),
an empty file, and a decompression bomb: a PNG or JPEG whose header declares 30000 x 30000 pixels (2.7 GB
decoded as BGR) in a file of a few hundred kilobytes or less.

Not in the corpus, because no decoder used here detects it: damage inside a JPEG's entropy-coded data.
libjpeg conceals it (a warning on stderr, a garbled image), so it loads.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    'BrokenImage',
    'corrupt_jpeg_header',
    'corrupt_png',
    'huge_jpeg_header',
    'huge_png',
    'truncated',
    'valid_jpeg',
    'valid_png',
    'write_broken_images',
]


@dataclasses.dataclass(frozen=True)
class BrokenImage:
    """One file of the corpus.

    Attributes:
        name: file name in the corpus folder (its extension is part of the case).
        path: where it was written.
        fault: what is wrong with it, for test ids and messages.
        loads: whether a correct loader decodes it (a wrong but harmless extension does).
        reason: a regex the loader's error must match when it does not load.
    """

    name: str
    path: Path
    fault: str
    loads: bool
    reason: str | None = None


def _pixels(size: int, seed: int) -> np.ndarray:
    """A smooth (compressible, JPEG-friendly) ``size`` x ``size`` BGR image with some seeded noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1)
    return np.clip(img + rng.integers(-8, 8, img.shape), 0, 255).astype(np.uint8)


def valid_jpeg(size: int = 48, seed: int = 0) -> bytes:
    """A good baseline JPEG."""
    import cv2

    ok, data = cv2.imencode('.jpg', _pixels(size, seed))
    assert ok
    return data.tobytes()


def valid_png(size: int = 48, seed: int = 0) -> bytes:
    """A good PNG."""
    import cv2

    ok, data = cv2.imencode('.png', _pixels(size, seed))
    assert ok
    return data.tobytes()


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    """The first ``keep`` of a file: a download or copy cut short."""
    return data[: int(len(data) * keep)]


def corrupt_jpeg_header(data: bytes, seed: int = 0) -> bytes:
    """A JPEG whose bytes after the start marker are garbage (a damaged first disk block)."""
    rng = np.random.default_rng(seed)
    return data[:2] + rng.integers(0, 256, len(data) - 2, dtype=np.uint8).tobytes()


def corrupt_png(data: bytes) -> bytes:
    """A PNG with one flipped byte in its image data: the chunk's CRC and zlib's check no longer match."""
    broken = bytearray(data)
    broken[data.index(b'IDAT') + 20] ^= 0xFF
    return bytes(broken)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', zlib.crc32(kind + payload))


def huge_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid 1-bit black PNG of ``width`` x ``height`` pixels that is small on disk (30000 x 30000: about
    0.5 MB, from 112 MB of zero rows deflated; made in a fraction of a second): a decompression bomb."""
    header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale, no interlace
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    rows_per_block = max(1, 4_000_000 // len(row))
    compressor = zlib.compressobj(1)  # level 1: four times faster than 9 on zeros, still ~230:1
    parts = [
        compressor.compress(row * min(rows_per_block, height - y)) for y in range(0, height, rows_per_block)
    ]
    parts.append(compressor.flush())
    signature = b'\x89PNG\r\n\x1a\n'
    return (
        signature
        + _png_chunk(b'IHDR', header)
        + _png_chunk(b'IDAT', b''.join(parts))
        + _png_chunk(b'IEND', b'')
    )


def huge_jpeg_header(data: bytes, width: int = 30000, height: int = 30000) -> bytes:
    """A small JPEG whose frame header (SOF0) claims ``width`` x ``height``: a loader that trusts the header
    to allocate the image would ask for gigabytes; one that decodes it finds the data short."""
    sof = data.index(b'\xff\xc0')
    return data[: sof + 5] + struct.pack('>HH', height, width) + data[sof + 9 :]


def write_broken_images(folder: str | Path, size: int = 48) -> dict[str, BrokenImage]:
    """Write the corpus into ``folder``; return its cases by file name (good images included as controls)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jpeg, png = valid_jpeg(size), valid_png(size)
    bmp = _bmp(size)
    cases: list[tuple[str, bytes, str, bool, str | None]] = [
        ('ok.jpg', jpeg, 'a good JPEG (control)', True, None),
        ('ok.png', png, 'a good PNG (control)', True, None),
        ('ok.bmp', bmp, 'a good BMP: formats other than JPEG and PNG go through PIL (control)', True, None),
        ('png_named.jpg', png, 'a PNG named .jpg (content decides: loads)', True, None),
        ('jpeg_named.png', jpeg, 'a JPEG named .png (content decides: loads)', True, None),
        ('text.jpg', b'this is not an image\n' * 4, 'a text file named .jpg', False, 'not an image'),
        ('empty.jpg', b'', 'an empty file', False, 'empty file'),
        ('truncated.jpg', truncated(jpeg), 'a JPEG cut at 60%', False, 'truncated'),
        ('truncated.png', truncated(png), 'a PNG cut at 60%', False, 'truncated'),
        ('truncated_header.jpg', jpeg[:40], 'a JPEG cut inside its headers', False, 'truncated|corrupt'),
        ('corrupt_header.jpg', corrupt_jpeg_header(jpeg), 'a JPEG with garbage headers', False, 'corrupt'),
        (
            'corrupt.png',
            corrupt_png(png),
            'a PNG with a flipped byte in its data',
            False,
            'cannot be decoded',
        ),
        ('huge.png', huge_png(), 'a 30000x30000 PNG of ~0.5 MB (decompression bomb)', False, 'max_pixels'),
        (
            'huge_header.jpg',
            huge_jpeg_header(jpeg),
            'a JPEG header claiming 30000x30000',
            False,
            'max_pixels',
        ),
    ]
    out = {}
    for name, data, fault, loads, reason in cases:
        path = folder / name
        path.write_bytes(data)
        out[name] = BrokenImage(name=name, path=path, fault=fault, loads=loads, reason=reason)
    return out


def _bmp(size: int) -> bytes:
    import cv2

    ok, data = cv2.imencode('.bmp', _pixels(size, 1))
    assert ok
    return data.tobytes()
