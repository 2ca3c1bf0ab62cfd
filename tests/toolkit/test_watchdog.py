"""sample_deadline: a hung sample raises SampleTimeoutError naming it, in a DataLoader worker and in the main
process; previous alarm handlers and timers survive; outside the main thread it is a no-op."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from toolkit.watchdog import SampleTimeoutError, deadline_supported, sample_deadline

pytestmark = pytest.mark.skipif(not hasattr(signal, 'setitimer'), reason='no SIGALRM on this platform')


class _HangsAt(Dataset):
    """Six samples; the one at ``hang`` sleeps forever inside its deadline, as a read from a dead mount."""

    def __init__(self, hang: int = 3, seconds: float = 1.0) -> None:
        self.hang, self.seconds = hang, seconds

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> torch.Tensor:
        with sample_deadline(
            self.seconds, lambda: f'{type(self).__name__}[{index}] (clips/video{index}.mp4)'
        ):
            if index == self.hang:
                while True:
                    time.sleep(10)
            return torch.tensor(index)


@pytest.mark.parametrize('num_workers', [0, 1])
def test_hung_sample_raises_naming_it(num_workers: int) -> None:
    batches = iter(DataLoader(_HangsAt(), batch_size=1, num_workers=num_workers))
    seen = []
    start = time.monotonic()
    try:
        with pytest.raises(
            SampleTimeoutError, match=r'_HangsAt\[3\] \(clips/video3\.mp4\) took longer than 1 s'
        ):
            for batch in batches:
                seen.append(int(batch))
    finally:
        # Stop the worker now: torch's own clean-up, when the iterator is collected after an error, waits
        # 5 s (MP_STATUS_CHECK_INTERVAL) for it, in whichever test happens to trigger the collection.
        getattr(batches, '_shutdown_workers', lambda: None)()
    assert time.monotonic() - start < 15  # 1 s deadline, plus a worker's start on a busy machine
    assert seen == [0, 1, 2]


def test_fast_body_returns_and_restores_handler_and_timer() -> None:
    fired = []

    def outer(signum: int, frame: Any) -> None:
        fired.append(signum)

    previous = signal.signal(signal.SIGALRM, outer)
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        with sample_deadline(5.0, lambda: 'fast'):
            pass
        assert signal.getsignal(signal.SIGALRM) is outer
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 29.0 < remaining <= 30.0  # the enclosing timer runs on where it was
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not fired


def test_enclosing_deadline_that_falls_due_first_still_fires() -> None:
    start = time.monotonic()
    with pytest.raises(SampleTimeoutError, match='outer took longer than 0.3 s'):
        with sample_deadline(0.3, lambda: 'outer'):
            with sample_deadline(30.0, lambda: 'inner'):
                time.sleep(10)
    assert time.monotonic() - start < 5
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_inner_deadline_fires_then_outer_is_rearmed() -> None:
    with sample_deadline(30.0, lambda: 'outer'):
        with pytest.raises(SampleTimeoutError, match='inner'):
            with sample_deadline(0.2, lambda: 'inner'):
                time.sleep(10)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25.0 < remaining < 30.0
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_a_failing_describe_does_not_hide_the_timeout() -> None:
    def broken() -> str:
        raise KeyError('img_path')

    with pytest.raises(SampleTimeoutError, match='sample not described: KeyError'):
        with sample_deadline(0.2, broken):
            time.sleep(10)


def test_outside_the_main_thread_it_is_a_no_op() -> None:
    out: dict[str, Any] = {}

    def body() -> None:
        out['supported'] = deadline_supported()
        with sample_deadline(0.05, lambda: 'thread'):
            time.sleep(0.2)  # longer than the deadline: nothing interrupts it
        out['done'] = True

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(5)
    assert out == {'supported': False, 'done': True}


@pytest.mark.parametrize('seconds', [None, 0, -1])
def test_no_deadline_when_disabled(seconds: float | None) -> None:
    with sample_deadline(seconds, lambda: 'x'):
        assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
