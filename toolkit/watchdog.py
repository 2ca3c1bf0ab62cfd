"""A deadline for one sample: :func:`sample_deadline` turns a hung ``__getitem__`` into an error naming it.

Why: a sample that never returns (a read from a dead NFS mount, a decoder looping on a crafted file, a
lock never released) stalls the whole run silently: the DataLoader waits on the worker forever, every
GPU waits on that rank. With a deadline the worker raises :class:`SampleTimeoutError`, naming the sample
(data set, index, file); the DataLoader re-raises it in the main process.

How: ``SIGALRM`` from ``setitimer(ITIMER_REAL)``, whose handler raises in the main thread of the process.
DataLoader workers run ``__getitem__`` in their process's main thread, so it works there and in a
``num_workers=0`` loader. Elsewhere it cannot: signals are delivered only to the main thread, and Windows
has no ``SIGALRM``; there the deadline is a documented no-op (the body runs without one).

Limits:

* The handler runs when the interpreter next gets control. A worker stuck inside C code that does not
  return to Python (a blocking read in a C library that retries on EINTR, a deadlock in a decoder) is not
  interrupted until it does. ``DataLoader(timeout=...)`` is the backstop: the main process gives up
  waiting for a batch after that many seconds, whatever the worker is doing (with a less precise message).
* One alarm timer per process: a previous handler and timer are saved and restored on exit, and an outer
  deadline that falls due first still fires (the inner one hands the alarm on to it), so deadlines nest.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = ['SampleTimeoutError', 'deadline_supported', 'sample_deadline']


class SampleTimeoutError(TimeoutError):
    """A sample took longer than its deadline. Constructible from the message alone, as DataLoader
    workers re-raise exceptions."""


def deadline_supported() -> bool:
    """Whether :func:`sample_deadline` can interrupt here: a platform with ``SIGALRM``, in the main thread."""
    return hasattr(signal, 'setitimer') and threading.current_thread() is threading.main_thread()


def _describe(describe: Callable[[], str]) -> str:
    try:
        return describe()
    except Exception as err:  # the message must not hide the timeout behind another error
        return f'<sample not described: {type(err).__name__}: {err}>'


@contextlib.contextmanager
def sample_deadline(seconds: float | None, describe: Callable[[], str]) -> Iterator[None]:
    """Raise :class:`SampleTimeoutError` in the body if it runs longer than ``seconds``.

    Args:
        seconds: the deadline; None or <= 0 disables it.
        describe: called only on timeout, returns what the message names, e.g.
            ``'ImageCaptionDataset[3] (images/train/000000000004.jpg)'``.

    Outside the main thread, or without ``SIGALRM`` (Windows), the body runs without a deadline.
    """
    if seconds is None or seconds <= 0 or not deadline_supported():
        yield
        return
    start = time.monotonic()
    due = start + seconds
    outer_handler = signal.getsignal(signal.SIGALRM)
    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    outer_first = 0 < outer_delay < seconds  # an enclosing timer falls due before this deadline
    outer_fired = False

    def on_alarm(signum: int, frame: FrameType | None) -> Any:
        nonlocal outer_fired
        if outer_first and not outer_fired:  # the enclosing timer's alarm: its handler, then ours again
            outer_fired = True
            if callable(outer_handler):
                outer_handler(signum, frame)  # an enclosing deadline raises here
            signal.setitimer(signal.ITIMER_REAL, max(due - time.monotonic(), 1e-6))
            return None
        raise SampleTimeoutError(
            f'{_describe(describe)} took longer than {seconds:g} s (sample deadline: the body was stopped)'
        )

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, outer_delay if outer_first else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        # None: a handler installed outside Python, which cannot be put back; the default then.
        signal.signal(signal.SIGALRM, signal.SIG_DFL if outer_handler is None else outer_handler)
        if outer_delay > 0 and not outer_fired:  # re-arm the enclosing timer for what is left of it
            signal.setitimer(
                signal.ITIMER_REAL, max(start + outer_delay - time.monotonic(), 1e-6), outer_interval
            )
        elif outer_fired and outer_interval > 0:  # a periodic one goes on
            signal.setitimer(signal.ITIMER_REAL, outer_interval, outer_interval)
