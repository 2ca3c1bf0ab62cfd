"""WebDataset tar shards (the format of open_clip, img2dataset and LAION): shard names and sizes, reading a
shard as groups of members, writing one. The data set that streams them is
:class:`pretrain.datasets.webdataset.WebDataset`.

Format (webdataset's): a shard is a POSIX tar file; a sample is the run of consecutive members that share a
key, the member path up to the first dot of its base name (``000123.jpg``, ``000123.txt``,
``000123.json`` are the image, caption and metadata of sample ``000123``). Shards are named by brace
patterns, ``shards/cc3m-{000000..000099}.tar`` or ``{a,b}``; ``pipe:CMD`` reads a shard from the standard
output of ``CMD`` (e.g. ``pipe:aws s3 cp s3://bucket/x.tar -``), so object stores stream without a local
copy (the command is split like a shell would, but runs without one: no pipes or redirections; a non-zero
exit status marks the shard as corrupt, since a failed download looks like a truncated stream). Every shard
is read once, front to back, with ``tarfile`` in stream mode (no seeks); ``.tar.gz`` / ``.tgz`` shards are
gunzipped on the way. A truncated or unreadable shard ends its groups with a :class:`WebDatasetError`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import os.path as osp
import posixpath
import re
import shlex
import subprocess
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = [
    'TarGroup',
    'WebDatasetError',
    'braceexpand',
    'iter_tar_groups',
    'read_sizes',
    'reader_shares',
    'write_shard',
]

# Bytes of the stream kept to check the end-of-archive marker (tarfile reads 10 KiB records).
_TAIL = 64 * 1024


class WebDatasetError(RuntimeError):
    """A corrupt sample or shard: ``'{shard}: {member}: {reason}'``; the three are also attributes.

    Constructible from the message alone, so that a DataLoader worker re-raises it with its own type.
    """

    def __init__(self, message: str, *, shard: str = '', member: str = '', reason: str = '') -> None:
        super().__init__(message)
        self.shard, self.member, self.reason = shard, member, reason

    @classmethod
    def at(cls, shard: str, member: str, reason: str) -> WebDatasetError:
        return cls(f'{shard}: {member}: {reason}', shard=shard, member=member, reason=reason)


# ----------------------------------------------------------------------------------------------------------
# Shard names and sizes
# ----------------------------------------------------------------------------------------------------------


def _matching_brace(text: str, start: int) -> int:
    depth = 0
    for index in range(start, len(text)):
        depth += {'{': 1, '}': -1}.get(text[index], 0)
        if depth == 0:
            return index
    return -1


def braceexpand(pattern: str) -> list[str]:
    """Expand ``{a,b}`` alternatives and ``{000..099}`` ranges (zero-padded as written), like bash/webdataset.

    >>> braceexpand('s-{00..02}.tar')
    ['s-00.tar', 's-01.tar', 's-02.tar']
    """
    start = pattern.find('{')
    end = _matching_brace(pattern, start) if start >= 0 else -1
    if end < 0:
        return [pattern]
    head, body, tail = pattern[:start], pattern[start + 1 : end], pattern[end + 1 :]
    match = re.fullmatch(r'(-?\d+)\.\.(-?\d+)', body)
    if match:
        lo, hi = int(match[1]), int(match[2])
        padded = any(len(s.lstrip('-')) > 1 and s.lstrip('-').startswith('0') for s in match.groups())
        width = max(len(s) for s in match.groups()) if padded else 0
        step = 1 if hi >= lo else -1
        options = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    else:
        options, depth, last = [], 0, 0
        for index, char in enumerate(body):
            depth += {'{': 1, '}': -1}.get(char, 0)
            if char == ',' and depth == 0:
                options.append(body[last:index])
                last = index + 1
        options.append(body[last:])
        if len(options) == 1:  # '{x}' is literal, as in bash
            return [head + '{' + o + '}' + t for o in braceexpand(body) for t in braceexpand(tail)]
    return [head + o for option in options for o in braceexpand(option + tail)]


def read_sizes(shards: Sequence[str]) -> dict[str, int] | None:
    """Samples per shard from open_clip's ``sizes.json`` (``{shard base name: count}``) in each shard's
    folder; None unless every shard is listed."""
    sizes: dict[str, int] = {}
    tables: dict[str, dict[str, Any]] = {}
    for shard in shards:
        if shard.startswith('pipe:'):
            return None
        folder = osp.dirname(shard)
        if folder not in tables:
            path = osp.join(folder, 'sizes.json')
            try:
                with open(path) as f:
                    tables[folder] = json.load(f)
            except (OSError, ValueError):
                tables[folder] = {}
        count = tables[folder].get(osp.basename(shard))
        if not isinstance(count, int) or count < 0:
            return None
        sizes[shard] = count
    return sizes


def reader_shares(per_rank: int, num_workers: int) -> list[int]:
    """Samples each DataLoader worker yields a epoch: ``per_rank`` split as evenly as possible (the same on
    every rank, so that every rank forms the same number of batches)."""
    return [per_rank // num_workers + (w < per_rank % num_workers) for w in range(num_workers)]


# ----------------------------------------------------------------------------------------------------------
# Reading tar streams
# ----------------------------------------------------------------------------------------------------------


class _CountingReader(io.RawIOBase):
    """Pass-through reader that counts bytes and keeps the last ``_TAIL`` of them (for the end check)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.total, self.tail = raw, 0, bytearray()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.total += len(data)
        self.tail += data
        if len(self.tail) > 2 * _TAIL:  # trim now and then, not on every read
            del self.tail[:-_TAIL]
        return data


def _open_stream(url: str) -> tuple[IO[bytes], Callable[[], str | None]]:
    """A binary stream of ``url`` and a function that closes it and returns an error text (or None)."""
    if url.startswith('pipe:'):
        proc = subprocess.Popen(shlex.split(url[5:]), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        stream: IO[bytes] = proc.stdout

        def finish() -> str | None:
            stream.close()
            code = proc.wait()
            return f'command exited with status {code}' if code else None

    else:
        stream = open(url, 'rb')  # noqa: SIM115  (closed by finish)

        def finish() -> str | None:
            stream.close()
            return None

    if url.endswith(('.gz', '.tgz')):
        return gzip.GzipFile(fileobj=stream), finish  # type: ignore[return-value]
    return stream, finish


def _split_key(name: str) -> tuple[str, str] | None:
    """``'a/000123.seg.png'`` -> ``('a/000123', 'seg.png')``; None for a name without a stem or extension."""
    folder, base = posixpath.split(name)
    stem, dot, ext = base.partition('.')
    if not stem or not dot or not ext:
        return None
    return posixpath.join(folder, stem), ext.lower()


@dataclass
class TarGroup:
    """One sample's members (extension -> bytes), read from ``shard``."""

    shard: str
    key: str
    members: dict[str, bytes] = field(default_factory=dict)


def _end_problem(reader: _CountingReader, offset: int) -> str | None:
    """Why the archive did not end with a zero block at ``offset``; tarfile stops silently on a truncated
    or corrupt header after the first member, so the end is checked here."""
    if reader.total < offset + tarfile.BLOCKSIZE:
        return f'truncated: the stream ends at byte {reader.total} without an end-of-archive marker'
    start = len(reader.tail) - (reader.total - offset)
    if start < 0 or any(reader.tail[start : start + tarfile.BLOCKSIZE]):
        return f'unreadable tar header at byte {offset}'
    return None


def iter_tar_groups(shard: str) -> Iterator[TarGroup | WebDatasetError]:
    """The samples of one shard in order, then a :class:`WebDatasetError` if it is corrupt or truncated.

    The sample being read when the stream fails is dropped (it may lack members) and named in the error;
    every sample before it has been yielded.
    """
    try:
        raw, finish = _open_stream(shard)
    except OSError as err:
        yield WebDatasetError.at(shard, '(start of archive)', f'cannot open ({err})')
        return
    reader = _CountingReader(raw)
    group: TarGroup | None = None
    member = '(start of archive)'  # the member being read, or where the stream stopped
    problem: str | None = None
    try:
        with tarfile.open(fileobj=reader, mode='r|') as tar:
            for info in tar:
                member = info.name
                split = _split_key(info.name) if info.isfile() else None
                if split is not None:
                    key, ext = split
                    if group is not None and key != group.key:
                        yield group
                        group = None
                    group = group or TarGroup(shard, key)
                    handle = tar.extractfile(info)
                    group.members.setdefault(ext, handle.read() if handle is not None else b'')
                member = f'after {info.name}'
                tar.members = []  # type: ignore[attr-defined]  # stream mode keeps every TarInfo otherwise
            problem = _end_problem(reader, tar.offset)
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error) as err:
        problem = f'{type(err).__name__}: {err}'
    finally:
        status = finish()
    if status:
        problem = f'{problem}; {status}' if problem else f'stream failed: {status}'
    if problem is None:
        if group is not None:
            yield group
        return
    lost = f' (sample {group.key!r}, being read, is dropped)' if group is not None else ''
    yield WebDatasetError.at(shard, member, f'{problem}{lost}')


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def write_shard(path: str, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """Write ``(key, {extension: bytes})`` samples to the tar file ``path``; return the sample count.

    Reproducible (zero times and owners, members in the given order) and atomic (a temporary file renamed
    into place), so that a crash never leaves a shard that looks complete.
    """
    tmp = f'{path}.{os.getpid()}.tmp'
    count = 0
    try:
        with tarfile.open(tmp, mode='w', format=tarfile.USTAR_FORMAT) as tar:
            for key, members in samples:
                if '.' in posixpath.basename(key):
                    raise ValueError(f'sample key {key!r} contains a dot (the key ends at the first one)')
                for ext, data in members.items():
                    info = tarfile.TarInfo(f'{key}.{ext}')
                    info.size, info.mode, info.mtime = len(data), 0o444, 0
                    tar.addfile(info, io.BytesIO(data))
                count += 1
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return count
