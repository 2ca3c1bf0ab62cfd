"""Bad video input never kills or hangs training: every kind of broken file of the generated corpus
(toolkit.testing.broken_video) through the header reader, the pre-flight check and the sandboxed decoder,
with ``on_error='raise'`` (a typed error naming the file) and ``'skip'`` (counted in the skip ledger);
decoder hangs and crashes (simulated in the child through the test hook); real data-loader workers; and a
soak of 2,000 decodes with flat memory."""

from __future__ import annotations

import functools
import gc
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate

from toolkit.skips import read_ledger, set_ledger
from toolkit.testing.broken_video import (
    BROKEN_KINDS,
    FAULT_HOOK,
    GOOD_FRAMES,
    frame_level,
    mp4_boxes,
    write_broken_videos,
    write_fault_videos,
)
from video.datasets.msrvtt import MSRVTTCaptionDataset
from video.datasets.transforms import (
    DecodeVideo,
    SampleFrames,
    VideoDecodeError,
    VideoDecoderCrashError,
    VideoDecodeTimeoutError,
    read_frame_count,
)
from video.io.sandbox import TEST_HOOK_ENV, get_sandbox

BACKENDS = ('decord', 'pyav')
DECODABLE = {'good': GOOD_FRAMES, 'mkv_named_mp4': GOOD_FRAMES, 'mp4_named_avi': GOOD_FRAMES, 'short': 2}
# What the header reader (and so the pre-flight check) says about each broken kind.
HEADER_ERRORS = {
    'zero_byte': r'empty file',
    'truncated': r"truncated \(box 'mdat' ends at byte \d+, the file has \d+ bytes\)",
    'truncated_tail': r"truncated \(box 'mdat' ends at byte \d+, the file has \d+ bytes\)",
    'no_moov': r'no "moov" box',
    'corrupt_moov': r'corrupt header',
    'header_claims_more': r'truncated \(the header lists 16 frames of \d+ bytes, the media data holds \d+ b',
    'audio_only': r'no video stream',
    'html_named_mp4': r"a text file, not a video \(starts with '<!DOCTYPE html>",
    'jpeg_named_mp4': r'a JPEG image, not a video',
    'garbage': r'cannot open \(InvalidDataError',
}
# What the decoders say (both backends; decord's and PyAV's own words differ).
DECODE_ERRORS = {
    'zero_byte': r'empty file',
    'truncated': r'av_read_frame failed|the header lists 16 frames but the file holds \d+ \(truncated\)',
    'truncated_tail': r'cannot decode with (decord|pyav)',
    'no_moov': r'cannot decode with (decord|pyav)',
    'corrupt_moov': r'cannot find video stream|no video stream',
    'header_claims_more': r'av_read_frame failed|the header lists 16 frames but the file holds \d+ \(trunc',
    'audio_only': r'cannot find video stream|no video stream',
    'html_named_mp4': r'a text file, not a video',
    'jpeg_named_mp4': r'a JPEG image, not a video',
    'garbage': r'cannot decode with (decord|pyav)',
}
assert set(DECODABLE) | set(HEADER_ERRORS) == set(BROKEN_KINDS) == set(DECODABLE) | set(DECODE_ERRORS)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp('broken_videos')
    return {**write_broken_videos(folder), **write_fault_videos(folder)}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / 'ledger.jsonl'
    set_ledger(str(path))
    yield path
    set_ledger(None)


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the decoder child act on the fault marker files (hang, segfault, abort)."""
    monkeypatch.setenv(TEST_HOOK_ENV, FAULT_HOOK)


def _match(path: Path, reason: str) -> str:
    """A regex for an error message that names ``path`` first, then gives ``reason``."""
    return '^' + str(path).replace('.', r'\.') + ': .*(' + reason + ')'


def _status(pid: int | str, field: str) -> str | None:
    """A field of /proc/PID/status (``None`` if the process is gone)."""
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return line.split(':', 1)[1].strip()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _rss_kib(pid: int | str = 'self') -> int:
    value = _status(pid, 'VmRSS')
    assert value is not None, f'process {pid} is gone'
    return int(value.split()[0])


def _gone(pid: int) -> bool:
    """The process does not exist any more: not running, not a zombie (it was reaped)."""
    return _status(pid, 'State') is None


def _sandbox_processes() -> dict[int, int]:
    """``{pid: the pid it serves}`` of every decoder child on the machine (zombies have no command line)."""
    out = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/cmdline', 'rb') as f:
                argv = f.read().split(b'\0')
        except OSError:
            continue
        if b'video.io.sandbox' in argv:
            out[int(entry)] = int(argv[argv.index(b'video.io.sandbox') + 4])
    return out


def _children(pids: set[int]) -> list[tuple[int, str | None]]:
    """(pid, state) of the processes whose parent is in ``pids``."""
    out = []
    for entry in os.listdir('/proc'):
        if entry.isdigit() and (ppid := _status(entry, 'PPid')) is not None and int(ppid) in pids:
            out.append((int(entry), _status(entry, 'State')))
    return out


# ------------------------------------------------------------------------------------------ the corpus


def test_corpus_frames_are_identifiable(corpus: dict[str, Path]) -> None:
    """The good clip decodes to the ramp the generator wrote; the broken files are what they say."""
    imgs = DecodeVideo(isolation='none').decode(str(corpus['good']), np.arange(GOOD_FRAMES))
    levels = imgs.mean(axis=(1, 2, 3))
    assert np.abs(levels - [frame_level(t) for t in range(GOOD_FRAMES)]).max() < 2, levels
    good = corpus['good'].read_bytes()
    assert [box[0] for box in mp4_boxes(good)][-1] == b'moov'  # index at the end, as encoders write it
    assert corpus['zero_byte'].stat().st_size == 0
    assert b'moov' not in [box[0] for box in mp4_boxes(corpus['no_moov'].read_bytes())]
    assert corpus['truncated'].stat().st_size < len(good) // 2 + 1024
    assert corpus['mkv_named_mp4'].read_bytes()[:4] == b'\x1a\x45\xdf\xa3'  # EBML (Matroska) magic
    assert corpus['mp4_named_avi'].read_bytes() == good


# -------------------------------------------------------------------------------------- header, pre-flight


@pytest.mark.parametrize('kind', sorted(BROKEN_KINDS))
def test_read_frame_count_each_kind(corpus: dict[str, Path], kind: str) -> None:
    path = corpus[kind]
    if kind in DECODABLE:
        assert read_frame_count(str(path)) == DECODABLE[kind]
        return
    with pytest.raises(VideoDecodeError, match=_match(path, HEADER_ERRORS[kind])) as info:
        read_frame_count(str(path))
    assert type(info.value) is VideoDecodeError  # a file error, not a crash or a timeout


def test_read_frame_count_survives_hang_and_crash(corpus: dict[str, Path], faults: None) -> None:
    """Containers other than mp4 are probed with PyAV in the sandbox: a hang or crash there is an error."""
    start = time.monotonic()
    with pytest.raises(VideoDecodeTimeoutError, match=_match(corpus['hang'], 'no result within the timeout')):
        read_frame_count(str(corpus['hang']), timeout=1.0)
    assert time.monotonic() - start < 5
    with pytest.raises(VideoDecoderCrashError, match=_match(corpus['segfault'], 'SIGSEGV')):
        read_frame_count(str(corpus['segfault']))
    assert read_frame_count(str(corpus['mkv_named_mp4'])) == GOOD_FRAMES  # the next one works


@pytest.fixture
def msrvtt_copy(shapes_tiny: Path, tmp_path: Path) -> Path:
    """A private copy of the MSR-VTT part of Shapes World tiny, safe to damage."""
    root = tmp_path / 'sw'
    shutil.copytree(shapes_tiny / 'msrvtt', root / 'msrvtt')
    shutil.copytree(shapes_tiny / 'videos', root / 'videos')
    return root


def _train_videos(root: Path) -> list[Path]:
    ds = MSRVTTCaptionDataset(data_root=str(root), ann_file='msrvtt/train_val_videodatainfo.json')
    return [Path(ds.get_data_info(i)['video_path']) for i in range(len(ds))]


def test_preflight_drops_or_names_bad_videos(
    msrvtt_copy: Path, corpus: dict[str, Path], faults: None
) -> None:
    """The pre-flight check drops (skip) or names (raise) what the header shows, survives a decoder crash
    while probing, and keeps the decodable oddities with their frame count. (Every kind's header verdict:
    test_read_frame_count_each_kind; the check calls the same function.)"""
    kinds = ['truncated', 'header_claims_more', 'html_named_mp4', 'segfault', 'mkv_named_mp4', 'short']
    videos = _train_videos(msrvtt_copy)
    assert len(videos) > len(kinds)
    damaged = dict(zip(videos, kinds, strict=False))
    for path, kind in damaged.items():
        shutil.copyfile(corpus[kind], path)
    unreadable = {path for path, kind in damaged.items() if kind not in DECODABLE}
    ds = MSRVTTCaptionDataset(
        data_root=str(msrvtt_copy), ann_file='msrvtt/train_val_videodatainfo.json', on_unreadable='skip'
    )
    kept = {
        Path(ds.get_data_info(i)['video_path']): ds.get_data_info(i)['total_frames'] for i in range(len(ds))
    }
    assert {Path(p) for p in ds.skipped} == unreadable and ds.num_skipped == len(unreadable) == 4
    assert set(kept) == set(videos) - unreadable
    assert kept[videos[4]] == GOOD_FRAMES and kept[videos[5]] == 2  # mkv named .mp4, 2-frame clip
    with pytest.raises(
        VideoDecodeError, match=_match(videos[0], 'truncated').replace('^', 'unreadable video \\(')
    ):
        MSRVTTCaptionDataset(data_root=str(msrvtt_copy), ann_file='msrvtt/train_val_videodatainfo.json')


# ------------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('kind', sorted(set(BROKEN_KINDS) - set(DECODABLE)))
def test_decode_each_broken_kind_raises_or_skips(
    corpus: dict[str, Path], ledger: Path, kind: str, backend: str
) -> None:
    path = str(corpus[kind])
    inds = np.arange(0, GOOD_FRAMES, 2)  # 8 frames, as SampleFrames would ask of the 16 the header lists
    with pytest.raises(VideoDecodeError, match=_match(corpus[kind], DECODE_ERRORS[kind])) as info:
        DecodeVideo(backend=backend).transform(dict(video_path=path, frame_inds=inds))
    assert type(info.value) is VideoDecodeError  # the decoder reported it: no crash, no timeout
    skip = DecodeVideo(backend=backend, on_error='skip')
    assert skip.transform(dict(video_path=path, frame_inds=inds)) is None
    assert skip.num_skipped == 1
    (line,) = read_ledger(str(ledger))
    assert line['kind'] == 'video' and line['source'] == path and line['pid'] == os.getpid()
    assert line['error'] == 'VideoDecodeError' and str(info.value) == f'{path}: {line["reason"]}'


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('kind', sorted(DECODABLE))
def test_decodable_oddities_decode(corpus: dict[str, Path], kind: str, backend: str) -> None:
    """A container other than the name says is probed by content; a 2-frame clip asked for 8 frames gets
    its frames repeated by SampleFrames; asking past its end is an error naming the file."""
    results = SampleFrames(num_frames=8).transform(dict(video_path=str(corpus[kind])))
    out = DecodeVideo(backend=backend).transform(results)
    assert out is not None and out['imgs'].shape == (8, 32, 32, 3)
    levels = out['imgs'].mean(axis=(1, 2, 3))
    expected = [frame_level(int(t)) for t in out['frame_inds']]
    assert np.abs(levels - expected).max() < 2, (levels, expected)
    if kind == 'short':
        assert out['frame_inds'].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
        with pytest.raises(
            VideoDecodeError, match=_match(corpus[kind], r'frame index 7 beyond the clip \(2')
        ):
            DecodeVideo(backend=backend).decode(str(corpus[kind]), np.arange(8))


def test_sample_frames_skips_a_clip_without_a_count(corpus: dict[str, Path], ledger: Path) -> None:
    """Without the pre-flight check (``check_files=False``) SampleFrames reads the count: same policy."""
    path = str(corpus['truncated'])
    with pytest.raises(VideoDecodeError, match=_match(corpus['truncated'], 'truncated')):
        SampleFrames(num_frames=4).transform(dict(video_path=path))
    assert SampleFrames(num_frames=4, on_error='skip').transform(dict(video_path=path)) is None
    (line,) = read_ledger(str(ledger))
    assert line['source'] == path and line['reason'].startswith('truncated (box')
    assert (
        SampleFrames(num_frames=4, on_error='skip').transform(dict(video_path=path, total_frames=0)) is None
    )
    assert read_ledger(str(ledger))[-1]['reason'] == 'the clip has no frames'


@pytest.mark.parametrize('backend', BACKENDS)
def test_out_of_range_indices(corpus: dict[str, Path], backend: str) -> None:
    path = corpus['good']
    with pytest.raises(VideoDecodeError, match=_match(path, r'frame index 16 beyond the clip \(16 frames\)')):
        DecodeVideo(backend=backend).decode(str(path), np.array([0, 16]))
    with pytest.raises(VideoDecodeError, match=_match(path, 'negative frame index -1')):
        DecodeVideo(backend=backend).decode(str(path), np.array([-1, 3]))
    with pytest.raises(ValueError, match='frame_inds is empty'):
        DecodeVideo(backend=backend).decode(str(path), np.array([], dtype=np.int64))


def test_isolation_none_gives_the_same_frames_and_errors(corpus: dict[str, Path]) -> None:
    for backend in BACKENDS:
        inds = np.array([15, 0, 7, 7])
        sandboxed = DecodeVideo(backend=backend).decode(str(corpus['good']), inds)
        assert np.array_equal(
            sandboxed, DecodeVideo(backend=backend, isolation='none').decode(str(corpus['good']), inds)
        )
        for kind in ('truncated', 'html_named_mp4'):
            errors = []
            for isolation in ('process', 'none'):
                with pytest.raises(VideoDecodeError) as info:
                    DecodeVideo(backend=backend, isolation=isolation).decode(str(corpus[kind]), inds)
                errors.append(str(info.value))
            assert errors[0] == errors[1]
    with pytest.raises(ValueError, match='isolation'):
        DecodeVideo(isolation='thread')
    with pytest.raises(ValueError, match='timeout'):
        DecodeVideo(timeout=0)


def test_fuzzed_files_only_raise_decode_errors(corpus: dict[str, Path], tmp_path: Path) -> None:
    """Random damage (bytes overwritten in the index or the media data, cuts) gives frames or a
    VideoDecodeError from the header reader and both decoders, never another exception."""
    good = corpus['good'].read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {'frames': 0, 'error': 0}
    for i in range(40):
        data = bytearray(good)
        if i % 4 == 3:
            data = data[: int(rng.integers(8, len(data)))]
        else:
            for pos in rng.integers(0, len(data), int(rng.integers(1, 16))):
                data[pos] = int(rng.integers(0, 256))
        path = tmp_path / f'fuzz{i}.mp4'
        path.write_bytes(bytes(data))
        try:
            read_frame_count(str(path))
        except VideoDecodeError as err:
            assert str(err).startswith(str(path))
        for backend in BACKENDS:
            try:
                DecodeVideo(backend=backend, timeout=10).decode(str(path), np.arange(0, 16, 3))
                outcomes['frames'] += 1
            except VideoDecodeError as err:
                assert str(err).startswith(str(path))
                outcomes['error'] += 1
    assert outcomes['frames'] > 0 and outcomes['error'] > 0, outcomes


# ------------------------------------------------------------------------------------------ hangs, crashes


def test_hang_times_out_and_the_next_decode_works(
    corpus: dict[str, Path], faults: None, ledger: Path
) -> None:
    sandbox = get_sandbox()
    DecodeVideo().decode(str(corpus['good']), np.arange(2))
    hung, restarts = sandbox.child_pid, sandbox.restarts
    assert hung is not None
    start = time.monotonic()
    with pytest.raises(VideoDecodeTimeoutError, match=_match(corpus['hang'], r'timeout of 1 s.*SIGKILL')):
        DecodeVideo(timeout=1.0).decode(str(corpus['hang']), np.arange(2))
    assert 1.0 <= time.monotonic() - start < 4  # the timeout, plus killing and reaping
    assert _gone(hung)  # killed although it ignores SIGTERM, and reaped: no zombie
    assert sandbox.restarts == restarts + 1 and sandbox.child_pid != hung
    assert DecodeVideo().decode(str(corpus['good']), np.arange(2)).shape == (2, 32, 32, 3)
    # With on_error='skip' a timeout is one more counted skip: test_dataloader_workers_skip_count_and_clean_up


@pytest.mark.parametrize(
    ('kind', 'signal_name', 'backend'), [('segfault', 'SIGSEGV', 'decord'), ('abort', 'SIGABRT', 'pyav')]
)
def test_crash_raises_and_the_next_decode_works(
    corpus: dict[str, Path], faults: None, ledger: Path, kind: str, signal_name: str, backend: str
) -> None:
    sandbox = get_sandbox()
    DecodeVideo(backend=backend).decode(str(corpus['good']), np.arange(2))
    crashed = sandbox.child_pid
    assert crashed is not None
    match = _match(corpus[kind], f'crashed \\(killed by {signal_name}\\)')
    with pytest.raises(VideoDecoderCrashError, match=match):
        DecodeVideo(backend=backend).decode(str(corpus[kind]), np.arange(2))
    assert _gone(crashed)  # reaped: no zombie
    assert DecodeVideo(backend=backend).decode(str(corpus['good']), np.arange(2)).shape == (2, 32, 32, 3)
    skip = DecodeVideo(backend=backend, on_error='skip')
    assert skip.transform(dict(video_path=str(corpus[kind]), frame_inds=np.arange(2))) is None
    (line,) = read_ledger(str(ledger))
    assert line['error'] == 'VideoDecoderCrashError' and signal_name in line['reason']


def test_restarts_leak_no_descriptors_or_memory(corpus: dict[str, Path], faults: None) -> None:
    decode = DecodeVideo()
    decode.decode(str(corpus['good']), np.arange(2))

    def fds() -> int:
        return len(os.listdir('/proc/self/fd'))

    before_fds, before_rss = fds(), _rss_kib()
    for _ in range(3):
        with pytest.raises(VideoDecoderCrashError):
            decode.decode(str(corpus['segfault']), np.arange(2))
        decode.decode(str(corpus['good']), np.arange(2))
    gc.collect()
    assert fds() == before_fds
    assert _rss_kib() - before_rss < 4 * 1024


def test_a_child_killed_between_calls_is_replaced_silently(corpus: dict[str, Path]) -> None:
    sandbox = get_sandbox()
    DecodeVideo().decode(str(corpus['good']), np.arange(2))
    pid = sandbox.child_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert DecodeVideo().decode(str(corpus['good']), np.arange(2)).shape == (2, 32, 32, 3)
    assert sandbox.child_pid != pid and _gone(pid)


_OWNER = """
import sys, numpy as np
from video.io.sandbox import get_sandbox
sandbox = get_sandbox()
sandbox.decode(sys.argv[1], np.arange(2))
print(sandbox.child_pid, flush=True)
if sys.argv[2] == 'wait':
    sys.stdin.read()
"""


@pytest.mark.parametrize('ending', ['exit', 'killed'])
def test_the_child_ends_with_its_parent(corpus: dict[str, Path], ending: str) -> None:
    """A process that exits reaps its decoder child; one that is SIGKILLed takes the child with it."""
    owner = subprocess.Popen(
        [sys.executable, '-c', _OWNER, str(corpus['good']), 'wait' if ending == 'killed' else 'exit'],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    child = int(owner.stdout.readline())
    assert child > 0
    if ending == 'killed':
        assert not _gone(child)
        owner.kill()
    owner.wait(timeout=30)
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)


# ------------------------------------------------------------------------------------------ data loader


def _note_worker(folder: Path, worker_id: int) -> None:
    (folder / f'worker{worker_id}').write_text(str(os.getpid()))


def test_dataloader_workers_skip_count_and_clean_up(
    msrvtt_copy: Path, corpus: dict[str, Path], faults: None, ledger: Path, tmp_path: Path
) -> None:
    """Two data-loader workers (daemonic processes) each run a decoder child; an epoch over a data set
    with broken, hanging and crashing videos finishes with full batches, every skip is in the ledger,
    and no decoder process is left once the workers have exited. The files are damaged after the
    pre-flight check (as on a failing disk), so the workers meet them."""
    pipeline = [
        dict(type='SampleFrames', num_frames=4, mode='random_segment'),
        dict(type='DecodeVideo', backend='decord', on_error='skip', timeout=1.0),
        dict(type='PackVideoTextInputs'),
    ]
    ds = MSRVTTCaptionDataset(
        data_root=str(msrvtt_copy),
        ann_file='msrvtt/train_val_videodatainfo.json',
        split=('train', 'validate'),
        pipeline=pipeline,
    )
    videos = [ds.get_data_info(i)['video_path'] for i in range(len(ds))]
    bad_kinds = ['truncated', 'html_named_mp4', 'hang', 'segfault']  # a refetch may meet them again
    bad = dict(zip(videos, bad_kinds, strict=False))
    for path, kind in bad.items():
        shutil.copyfile(corpus[kind], path)
    assert len(ds) > len(bad) and len(bad) == len(bad_kinds)
    notes = tmp_path / 'workers'
    notes.mkdir()
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=2,
        num_workers=2,
        collate_fn=pseudo_collate,
        worker_init_fn=functools.partial(_note_worker, notes),
    )
    batches = list(loader)
    del loader
    assert sum(len(batch['inputs']) for batch in batches) == len(ds)
    assert all(x.shape == (3, 4, 64, 64) for batch in batches for x in batch['inputs'])
    assert all(str(s.video_path) not in bad for batch in batches for s in batch['data_samples'])
    workers = {int(p.read_text()) for p in notes.iterdir()}
    assert len(workers) == 2 and os.getpid() not in workers
    lines = read_ledger(str(ledger))
    assert {line['source'] for line in lines} == set(bad)  # each bad video visited once, refetches may repeat
    assert {line['pid'] for line in lines} <= workers and len(lines) >= len(bad)
    errors = {line['error'] for line in lines}
    assert errors == {'VideoDecodeError', 'VideoDecodeTimeoutError', 'VideoDecoderCrashError'}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [p for p, owner in _sandbox_processes().items() if owner in workers] + _children(workers)
        if not left:
            break
        time.sleep(0.1)
    assert not left, f'decoder processes left behind: {left}'


# ------------------------------------------------------------------------------------------ soak


def test_soak_2000_decodes_memory_stays_flat(corpus: dict[str, Path]) -> None:
    """2,000 sandboxed decodes, good and bad files alternating: neither process's memory grows."""
    bad = [
        'truncated',
        'html_named_mp4',
        'zero_byte',
        'header_claims_more',
        'garbage',
        'no_moov',
        'audio_only',
    ]
    good = ['good', 'mkv_named_mp4', 'short']
    decoders = {backend: DecodeVideo(backend=backend, timeout=10) for backend in BACKENDS}
    inds = np.arange(0, 16, 2)
    counts = {'frames': 0, 'errors': 0}

    def run(n: int, start: int) -> None:
        for i in range(start, start + n):
            kind = good[(i // 2) % len(good)] if i % 2 == 0 else bad[(i // 2) % len(bad)]
            decode = decoders[BACKENDS[(i // 7) % 2]]
            try:
                frames = decode.decode(str(corpus[kind]), inds if kind != 'short' else inds % 2)
                assert frames.shape == (8, 32, 32, 3)
                counts['frames'] += 1
            except VideoDecodeError:
                assert kind in bad
                counts['errors'] += 1

    sandbox = get_sandbox()
    warmup = 200
    run(warmup, 0)  # both decoders loaded, the allocators' pools and the frames file at their size
    child, restarts = sandbox.child_pid, sandbox.restarts
    assert child is not None
    gc.collect()
    parent_before, child_before = _rss_kib(), _rss_kib(child)
    start = time.monotonic()
    run(2000, warmup)
    elapsed = time.monotonic() - start
    gc.collect()
    parent_grown, child_grown = _rss_kib() - parent_before, _rss_kib(child) - child_before
    assert sandbox.child_pid == child and sandbox.restarts == restarts  # one child all along
    assert counts == {'frames': 1100, 'errors': 1100}
    print(
        f'soak: 2000 decodes in {elapsed:.1f} s; RSS KiB: parent {parent_before} -> '
        f'{parent_before + parent_grown}, child {child_before} -> {child_before + child_grown}'
    )
    # A leaked clip (8 x 32 x 32 x 3 = 24 KiB) or reader per decode would add 25 MiB or more.
    assert parent_grown < 4 * 1024, f'parent RSS grew by {parent_grown} KiB'
    assert child_grown < 4 * 1024, f'decoder child RSS grew by {child_grown} KiB'


def test_configs_protect_training() -> None:
    """Every config's video pipeline decodes in the sandbox; training pipelines skip (and count) bad clips,
    evaluation pipelines raise (a metric over fewer clips would mislead)."""
    from mmengine.config import Config

    from toolkit.registry import TRANSFORMS

    repo = Path(__file__).resolve().parents[2]
    seen = 0
    for path in sorted((repo / 'configs').rglob('*.py')):
        if 'DecodeVideo' not in path.read_text():
            continue
        cfg = Config.fromfile(str(path))
        for key, on_error in (('train_pipeline', 'skip'), ('test_pipeline', 'raise')):
            for step in cfg.get(key, []):
                if step['type'] == 'DecodeVideo':
                    decode = TRANSFORMS.build(step)
                    assert (decode.isolation, decode.on_error) == ('process', on_error), (path, key)
                    seen += 1
    assert seen >= 8
