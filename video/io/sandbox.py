"""Video decoding (:mod:`video.io.decode`) in a child process, so that a decoder that crashes or hangs cannot
take training with it.

Why a process. decord and PyAV run FFmpeg, C code that a malformed file can send into a segfault, an abort
or an endless loop. In a data-loader worker a segfault ends the epoch with "DataLoader worker exited
unexpectedly" and a hang blocks training forever (the loader's own ``timeout`` is off by default and, when
set, fails the whole run). Here each process that decodes (one per data-loader worker) keeps one
long-lived decoder child; a clip that does not come back within ``timeout`` seconds gets the child killed
with SIGKILL (a hung decoder may ignore SIGTERM), and a child that dies is reaped; either becomes a
:class:`VideoDecodeError` subclass naming the file, which ``DecodeVideo(on_error=...)`` raises or skips.
The next clip starts a fresh child (started right away, so its start-up overlaps the rest of the batch).

Why ``subprocess`` and not ``multiprocessing``. Data-loader workers are daemonic processes, which may not
have ``multiprocessing`` children; a ``subprocess.Popen`` of ``python -m video.io.sandbox``
may. The child imports only the standard library, numpy and the decoder (about 0.5 s and 50 MB, against
6 s and 700 MB with torch), and stays up: a fresh interpreter per clip would cost more than decoding.

Protocol. Requests and replies are length-prefixed JSON messages on two pipes; the frames travel through a
memfd (an anonymous shared-memory file, Linux) that both processes map: the child writes the clip there
and replies with its shape, the parent copies it out into the array it returns (one ``memcpy``; a pipe
would copy twice through the kernel in 64 KiB pieces). The memfd grows to the largest clip and shrinks when
clips become much smaller; it and the pipes are closed with their child, so nothing lingers in /dev/shm.

Lifetime. Started lazily by the first decode of a process; closed when the process exits (through a
``multiprocessing`` finalizer, which also runs in data-loader workers, where ``atexit`` does not). Should
the parent be killed instead, the child dies with it: it asked the kernel for SIGKILL on its parent's death
(``PR_SET_PDEATHSIG``) and it also exits when its request pipe closes. A forked process (a data-loader
worker) forgets the sandbox it inherited and starts its own.

Tests (only) inject faults: with the environment variable :data:`TEST_HOOK_ENV` set to ``'module:function'``
the child calls that function with the path before decoding it (see ``toolkit.testing.broken_video``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import mmap
import os
import os.path as osp
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.util import Finalize
from typing import Any

import numpy as np

from video.io.decode import (
    VideoDecodeError,
    VideoDecoderCrashError,
    VideoDecodeTimeoutError,
    count_frames,
    decode_frames,
)

__all__ = ['DEFAULT_TIMEOUT', 'TEST_HOOK_ENV', 'DecodeSandbox', 'get_sandbox']

# Seconds per clip. A 32-frame clip of a 30 s MSR-VTT video decodes in well under 1 s on one core; 30 s
# leaves room for a slow disk or a loaded machine and still frees a stuck worker within one log interval.
DEFAULT_TIMEOUT = 30.0
STARTUP_TIMEOUT = 120.0  # interpreter + numpy + decoder imports; seconds on a loaded machine
TEST_HOOK_ENV = 'VLTOOLKIT_DECODE_TEST_HOOK'
_MODULE = 'video.io.sandbox'
_REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
_HEADER = struct.Struct('>I')
_SHM_STEP = 1 << 20  # the memfd grows in whole MiB
_SHM_SHRINK_ABOVE = 64 << 20  # and shrinks (to fit) when a clip needs less than a quarter of it past this

# ----------------------------------------------------------------------------------------------------------
# Messages
# ----------------------------------------------------------------------------------------------------------


class _ChildGone(Exception):
    """The child closed its reply pipe (it died)."""


class _TimedOut(Exception):
    """No reply before the deadline."""


def _write_message(fd: int, message: dict[str, Any]) -> None:
    body = json.dumps(message).encode()
    data = memoryview(_HEADER.pack(len(body)) + body)
    while data:
        data = data[os.write(fd, data) :]


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    """``size`` bytes of ``fd``; :class:`_TimedOut` past ``deadline`` (monotonic), :class:`_ChildGone` at
    end of file. ``deadline=None`` blocks (the child waiting for requests)."""
    chunks: list[bytes] = []
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000) + 1)):
                raise _TimedOut
        chunk = os.read(fd, size)
        if not chunk:
            raise _ChildGone
        chunks.append(chunk)
        size -= len(chunk)
    return b''.join(chunks)


def _read_message(fd: int, deadline: float | None) -> dict[str, Any]:
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    message: dict[str, Any] = json.loads(_read_exact(fd, size, deadline))
    return message


# ----------------------------------------------------------------------------------------------------------
# The parent side
# ----------------------------------------------------------------------------------------------------------


def _shared_file() -> int:
    """A file descriptor for the frames: a memfd, or an unlinked temporary file where there is none."""
    if hasattr(os, 'memfd_create'):
        return os.memfd_create('vltoolkit-decode-frames', os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as handle:  # already unlinked: the descriptor is all that is left
        return os.dup(handle.fileno())


def _signal_name(returncode: int | None) -> str:
    if returncode is None:
        return 'still running'
    if returncode < 0:
        try:
            return f'killed by {signal.Signals(-returncode).name}'
        except ValueError:
            return f'killed by signal {-returncode}'
    return f'exited with status {returncode}'


class _Child:
    """One decoder process with its pipes, its frames file and their mapping in this process.

    ``resources`` (request pipe, reply pipe, frames file, its mapping) is one list shared with the
    finalizer, so that a remapping is closed at exit too.
    """

    def __init__(self, preload: str) -> None:
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        frames_fd = _shared_file()
        self.resources: list[Any] = [request_w, reply_r, frames_fd, None]
        self.ready = False
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(p for p in (_REPO_ROOT, env.get('PYTHONPATH')) if p)
        fds = (request_r, reply_w, frames_fd)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, '-m', _MODULE, *map(str, fds), str(os.getpid()), preload],
                stdin=subprocess.DEVNULL,
                pass_fds=fds,
                env=env,
            )
        except BaseException:
            _close(self.resources)
            raise
        finally:
            os.close(request_r)
            os.close(reply_w)
        # Ends the child at process exit (data-loader workers included: atexit does not run there).
        self._finalizer = Finalize(self, _shutdown, args=(self.proc, self.resources), exitpriority=10)

    @property
    def request_w(self) -> int:
        return int(self.resources[0])

    @property
    def reply_r(self) -> int:
        return int(self.resources[1])

    def close(self, kill: bool = False) -> None:
        """Stop and reap the child and close everything; ``kill`` sends SIGKILL at once (a hung decoder)."""
        if self._finalizer.still_active():
            self._finalizer.cancel()
            _shutdown(self.proc, self.resources, kill=kill)

    def forget(self) -> None:
        """In a forked process: close the inherited descriptors, leave the child to its real parent."""
        self._finalizer.cancel()
        _close(self.resources)

    def frames(self, shape: list[int]) -> np.ndarray:
        """Copy out the clip that the child left in the frames file."""
        frames_fd, frames_map = self.resources[2], self.resources[3]
        size = os.fstat(frames_fd).st_size
        if frames_map is None or len(frames_map) != size:
            if frames_map is not None:
                frames_map.close()
            frames_map = self.resources[3] = mmap.mmap(frames_fd, size, access=mmap.ACCESS_READ)
        out = np.empty(shape, dtype=np.uint8)
        src = np.ndarray(shape, dtype=np.uint8, buffer=frames_map)
        np.copyto(out, src)
        del src  # releases the mapping's buffer export, so it can be closed or remapped
        return out


def _close(resources: list[Any]) -> None:
    """Close file descriptors (ints) and objects with ``close``; set each slot to ``None``."""
    for i, resource in enumerate(resources):
        try:
            if isinstance(resource, int):
                os.close(resource)
            elif resource is not None:
                resource.close()
        except (OSError, BufferError):
            pass
        resources[i] = None


def _shutdown(proc: subprocess.Popen[bytes], resources: list[Any], kill: bool = False) -> None:
    """End a child (its request pipe closes, so it exits; SIGKILL if it does not) and reap it."""
    _close(resources[:1])
    resources[0] = None
    if kill:
        proc.kill()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _close(resources)


class DecodeSandbox:
    """A decoder child process that clips are sent to, with a timeout per clip (see the module docstring).

    Use the process-wide one, :func:`get_sandbox`; each call blocks until its clip is back (calls from
    several threads take turns). A crash or a timeout raises :class:`VideoDecoderCrashError` or
    :class:`VideoDecodeTimeoutError` naming the file and starts a new child for the next call; a child that
    dies between calls (killed from outside) is replaced silently. A child that cannot start raises
    ``RuntimeError``: that is a broken installation, not a broken file, and must not be skipped.
    """

    def __init__(self) -> None:
        self._child: _Child | None = None
        self._lock = threading.Lock()
        self.pid = os.getpid()  # the process that owns the child
        self.restarts = 0  # children replaced after a crash or a timeout

    @property
    def child_pid(self) -> int | None:
        """Process id of the current decoder child (``None`` before the first call or after ``close``)."""
        return None if self._child is None else self._child.proc.pid

    def decode(
        self,
        path: str,
        frame_inds: np.ndarray | list[int],
        *,
        backend: str = 'decord',
        num_threads: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> np.ndarray:
        """Frames (T, H, W, 3) uint8 of ``path`` at ``frame_inds``, decoded in the child."""
        inds = [int(i) for i in np.asarray(frame_inds, dtype=np.int64).reshape(-1)]
        if not inds:
            raise ValueError(f'{path}: frame_inds is empty')
        request = dict(op='decode', path=path, inds=inds, backend=backend, threads=num_threads)
        with self._lock:
            child, reply = self._call(request, path, timeout, backend)
            return child.frames(reply['shape'])

    def count_frames(self, path: str, *, timeout: float = DEFAULT_TIMEOUT) -> int:
        """:func:`count_frames` of ``path`` in the child."""
        with self._lock:
            _, reply = self._call(dict(op='count', path=path), path, timeout, 'pyav')
            return int(reply['count'])

    def close(self) -> None:
        """Stop the child (a later call starts a new one)."""
        with self._lock:
            if self._child is not None:
                self._child.close()
                self._child = None

    def _call(
        self, request: dict[str, Any], path: str, timeout: float, backend: str
    ) -> tuple[_Child, dict[str, Any]]:
        request['hook'] = os.environ.get(TEST_HOOK_ENV)
        for attempt in range(2):
            child = self._ready_child(backend)
            try:
                _write_message(child.request_w, request)
                break
            except OSError:  # BrokenPipeError: the child died while idle, not because of this file
                self._drop(kill=True)
                if attempt:
                    raise
        try:
            reply = _read_message(child.reply_r, time.monotonic() + timeout)
        except _TimedOut:
            self._drop(kill=True, respawn=backend)
            raise VideoDecodeTimeoutError(
                f'{path}: no result within the timeout of {timeout:g} s; the decoder process was killed '
                '(SIGKILL) and a new one started'
            ) from None
        except _ChildGone:
            how = self._drop(kill=False, respawn=backend)
            raise VideoDecoderCrashError(
                f'{path}: the decoder process crashed ({how}) while reading this file; a new one was started'
            ) from None
        if not reply['ok']:
            raise VideoDecodeError(reply['error'])
        return child, reply

    def _ready_child(self, backend: str) -> _Child:
        child = self._child
        if child is not None and child.proc.poll() is not None:  # died between calls
            self._drop(kill=False)
            child = None
        if child is None:
            child = self._child = _Child(backend)
        if not child.ready:
            try:
                _read_message(child.reply_r, time.monotonic() + STARTUP_TIMEOUT)
            except (_TimedOut, _ChildGone):
                self._drop(kill=True)
                raise RuntimeError(
                    f'the video decoder process ({sys.executable} -m {_MODULE}) did not start within '
                    f'{STARTUP_TIMEOUT:g} s ({_signal_name(child.proc.returncode)}); see its error output'
                ) from None
            child.ready = True
        return child

    def _drop(self, *, kill: bool, respawn: str | None = None) -> str:
        """Reap the current child; with ``respawn``, start the next one now. Returns how the child ended."""
        child, self._child = self._child, None
        how = 'not started'
        if child is not None:
            child.close(kill=kill)
            how = _signal_name(child.proc.returncode)
        if respawn is not None:
            self.restarts += 1
            self._child = _Child(respawn)
        return how


_sandbox: DecodeSandbox | None = None
_sandbox_lock = threading.Lock()


def get_sandbox() -> DecodeSandbox:
    """This process's :class:`DecodeSandbox` (created on first use; a forked process gets its own)."""
    global _sandbox
    with _sandbox_lock:
        if _sandbox is None or _sandbox.pid != os.getpid():
            _sandbox = DecodeSandbox()
        return _sandbox


def _after_fork_in_child() -> None:
    """A fork (a data-loader worker) must not talk to its parent's child: forget it, keep it running."""
    global _sandbox, _sandbox_lock
    _sandbox_lock = threading.Lock()
    inherited, _sandbox = _sandbox, None
    if inherited is not None and inherited._child is not None:
        inherited._child.forget()
        inherited._child = None


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ----------------------------------------------------------------------------------------------------------
# The child
# ----------------------------------------------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux for SIGKILL when the parent dies (even while a decode hangs), then check it is alive."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the closed request pipe still ends the loop
    if os.getppid() != parent_pid:
        os._exit(0)


class _FramesWriter:
    """The child's side of the frames file: resized to fit the clip, then written through a mapping."""

    def __init__(self, fd: int) -> None:
        self.fd, self.size = fd, 0
        self.map: mmap.mmap | None = None

    def write(self, imgs: np.ndarray) -> None:
        need = imgs.nbytes
        if need > self.size or (self.size > _SHM_SHRINK_ABOVE and need < self.size // 4):
            if self.map is not None:
                self.map.close()
            self.size = max(_SHM_STEP, -(-need // _SHM_STEP) * _SHM_STEP)
            os.ftruncate(self.fd, self.size)
            self.map = mmap.mmap(self.fd, self.size)
        dst = np.ndarray(imgs.shape, dtype=np.uint8, buffer=self.map)
        np.copyto(dst, imgs)
        del dst


def _serve(request_fd: int, reply_fd: int, frames_fd: int, parent_pid: int, preload: str) -> None:
    """The child's loop: one request at a time until the request pipe closes."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; the child ends with it
    try:
        importlib.import_module('decord' if preload == 'decord' else 'av')
    except ImportError:
        pass  # reported by the first decode that needs it
    writer = _FramesWriter(frames_fd)
    hooks: dict[str, Callable[[str], Any]] = {}
    _write_message(reply_fd, dict(ok=True, ready=os.getpid()))
    while True:
        try:
            request = _read_message(request_fd, None)
        except _ChildGone:
            return  # the parent closed the pipe or died
        path = str(request.get('path'))
        try:
            spec = request.get('hook')
            if spec:
                if spec not in hooks:
                    module, _, name = spec.partition(':')
                    hooks[spec] = getattr(importlib.import_module(module), name)
                hooks[spec](path)
            if request['op'] == 'count':
                reply: dict[str, Any] = dict(ok=True, count=count_frames(path))
            else:
                imgs = decode_frames(path, request['inds'], request['backend'], int(request['threads']))
                writer.write(imgs)
                reply = dict(ok=True, shape=list(imgs.shape))
                del imgs
        except VideoDecodeError as err:
            reply = dict(ok=False, error=str(err))
        except Exception as err:  # a bug or MemoryError: still this file's failure, named
            reply = dict(ok=False, error=f'{path}: {type(err).__name__} in the decoder process ({err})')
        _write_message(reply_fd, reply)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description='Video decoder child of DecodeSandbox (not for direct use).')
    for name in ('request_fd', 'reply_fd', 'frames_fd', 'parent_pid'):
        parser.add_argument(name, type=int)
    parser.add_argument('preload', choices=('decord', 'pyav'))
    args = parser.parse_args(argv)
    _serve(args.request_fd, args.reply_fd, args.frames_fd, args.parent_pid, args.preload)


if __name__ == '__main__':
    main()
