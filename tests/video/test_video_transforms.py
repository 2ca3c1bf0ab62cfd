"""Video transforms: frame sampling, decord/PyAV decoding and their errors, resize, flip, packing."""

from __future__ import annotations

import gc
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging import MMLogger

from toolkit.registry import TRANSFORMS
from toolkit.skips import local_skip_count, read_ledger, set_ledger
from video.datasets.transforms import (
    CenterCropVideo,
    DecodeVideo,
    PackVideoTextInputs,
    RandomFlipVideo,
    ResizeVideo,
    SampleFrames,
    VideoDecodeError,
    read_frame_count,
)

BACKENDS = ('decord', 'pyav')


@pytest.fixture(scope='module')
def video(shapes_tiny: Path) -> str:
    return str(shapes_tiny / 'videos' / 'video0.mp4')


def _gop_frames() -> np.ndarray:
    """40 frames (48 x 64) of dim noise over a brightness ramp: each frame 4 levels brighter."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 64, (40, 48, 64, 3), dtype=np.uint8)
    return frames + (np.arange(40, dtype=np.uint8) * 4)[:, None, None, None]  # <= 219


@pytest.fixture(scope='module')
def gop_video(tmp_path_factory: pytest.TempPathFactory) -> str:
    """40 frames, a keyframe every 8 and 2 B-frames: decoding must skip GOPs and reorder frames."""
    import av

    path = str(tmp_path_factory.mktemp('gop') / 'gop.mp4')
    frames = _gop_frames()
    with av.open(path, 'w') as container:
        stream = container.add_stream('libx264', rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, 'yuv420p'
        stream.options = {'g': '8', 'bf': '2', 'crf': '18', 'threads': '1'}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _pyav_all_frames(path: str) -> np.ndarray:
    """Every frame decoded independently of our code: PyAV's plain ``container.decode``."""
    import av

    with av.open(path) as container:
        return np.stack([f.to_ndarray(format='rgb24') for f in container.decode(video=0)])


# ------------------------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize(
    ('total', 'num', 'expected'),
    [
        (16, 4, [2, 6, 10, 14]),
        (16, 8, [1, 3, 5, 7, 9, 11, 13, 15]),
        (10, 3, [1, 5, 8]),
        (96, 8, [6, 18, 30, 42, 54, 66, 78, 90]),
        (1, 3, [0, 0, 0]),
        (3, 8, [0, 0, 0, 1, 1, 2, 2, 2]),  # short clip: repeated, sorted, valid
    ],
)
def test_uniform_indices(total: int, num: int, expected: list[int]) -> None:
    out = SampleFrames(num_frames=num).transform(dict(video_path='unused.mp4', total_frames=total))
    assert out['frame_inds'].dtype == np.int64 and out['frame_inds'].tolist() == expected
    assert out['total_frames'] == total


def test_random_segment_inside_segments_and_seeded() -> None:
    sampler = SampleFrames(num_frames=4, mode='random_segment')
    draws = []
    for seed in range(20):
        np.random.seed(seed)
        inds = sampler.sample(17)
        assert inds.dtype == np.int64
        for i, ind in enumerate(inds):
            assert (i * 17) // 4 <= ind < ((i + 1) * 17) // 4
        draws.append(tuple(inds))
    assert len(set(draws)) > 10  # varies with the seed
    np.random.seed(3)
    first = sampler.sample(17)
    np.random.seed(3)
    assert np.array_equal(first, sampler.sample(17))  # and is reproducible
    for total in (1, 2, 5):  # short clips
        inds = sampler.sample(total)
        assert np.all(np.diff(inds) >= 0) and inds.min() >= 0 and inds.max() < total


def test_dense_clip_with_frame_interval() -> None:
    assert SampleFrames(num_frames=4, frame_interval=2).sample(20).tolist() == [6, 8, 10, 12]
    assert SampleFrames(num_frames=4, frame_interval=3).sample(5).tolist() == [0, 3, 4, 4]  # repeat last
    np.random.seed(0)
    inds = SampleFrames(num_frames=4, frame_interval=2, mode='random_segment').sample(20)
    assert np.array_equal(np.diff(inds), [2, 2, 2]) and 0 <= inds[0] <= 13


def test_sample_frames_reads_the_length(video: str, gop_video: str) -> None:
    assert read_frame_count(video) == 16 and read_frame_count(gop_video) == 40
    out = SampleFrames(num_frames=4).transform(dict(video_path=video))
    assert out['total_frames'] == 16 and out['frame_inds'].tolist() == [2, 6, 10, 14]


# ------------------------------------------------------------------------------------------------ decoding


def test_decord_equals_pyav_and_reference(video: str, gop_video: str) -> None:
    for path in (video, gop_video):
        reference = _pyav_all_frames(path)
        total = len(reference)
        for inds in (np.arange(total), np.array([total - 1, 3, 3, 0, total // 2]), np.array([total - 2])):
            decoded = {b: DecodeVideo(backend=b).decode(path, inds) for b in BACKENDS}
            assert decoded['decord'].dtype == np.uint8 and decoded['decord'].shape[0] == len(inds)
            assert np.array_equal(decoded['decord'], decoded['pyav'])
            assert np.array_equal(decoded['decord'], reference[inds])
    frames = _pyav_all_frames(video)
    assert frames.shape == (16, 64, 64, 3)
    assert frames[0].std() > 5 and not np.array_equal(frames[0], frames[-1])  # a scene, and motion


def test_decoded_content_matches_the_source(gop_video: str, video: str) -> None:
    """Right pixels in the right order: the source's brightness ramp survives H.264 and B-frame reordering."""
    out = DecodeVideo(backend='pyav').transform(dict(video_path=gop_video, frame_inds=np.arange(40)))
    imgs = out['imgs']
    assert imgs.shape == (40, 48, 64, 3) and out['img_shape'] == (48, 64) == out['ori_shape']
    source = _gop_frames()
    pixel_error = np.abs(imgs.astype(np.float64) - source).mean(axis=(1, 2, 3))
    assert pixel_error.max() < 16, pixel_error  # H.264 (4:2:0) smooths the noise
    mean_error = np.abs(imgs.mean(axis=(1, 2, 3)) - source.mean(axis=(1, 2, 3)))
    assert mean_error.max() < 1.5, mean_error  # each frame where it belongs: the ramp steps by 4 levels
    shapes = DecodeVideo().transform(dict(video_path=video, frame_inds=np.array([0, 15])))['imgs']
    assert 20 < shapes.mean() < 235 and shapes.std() > 5 and not np.array_equal(shapes[0], shapes[1])


def test_decode_errors_name_the_file(tmp_path: Path, video: str) -> None:
    data = Path(video).read_bytes()
    cases = {
        'empty.mp4': b'',
        'garbage.mp4': bytes(range(256)) * 20,
        'truncated.mp4': data[: len(data) // 2],
        'missing.mp4': None,
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        for backend in BACKENDS:
            with pytest.raises(VideoDecodeError, match=name.replace('.', r'\.')):
                DecodeVideo(backend=backend).transform(dict(video_path=str(path), frame_inds=np.array([0])))
        with pytest.raises(VideoDecodeError, match=name.replace('.', r'\.')):
            read_frame_count(str(path))
    for backend in BACKENDS:
        with pytest.raises(
            VideoDecodeError, match=r'video0\.mp4: frame index 16 beyond the clip \(16 frames\)'
        ):
            DecodeVideo(backend=backend).decode(video, np.array([0, 16]))


def test_skip_returns_none_and_counts(tmp_path: Path, video: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / 'bad.mp4'
    bad.write_bytes(b'\x00' * 100)
    set_ledger(str(tmp_path / 'ledger.jsonl'))
    try:
        messages: list[str] = []
        monkeypatch.setattr(
            MMLogger.get_current_instance(), 'warning', lambda msg, *a, **k: messages.append(msg)
        )
        before = local_skip_count('video')
        decode = TRANSFORMS.build(dict(type='DecodeVideo', backend='pyav', on_error='skip'))
        for _ in range(2):
            assert decode(dict(video_path=str(bad), frame_inds=np.array([0]))) is None
        assert decode(dict(video_path=video, frame_inds=np.array([0])))['imgs'].shape == (1, 64, 64, 3)
        assert decode.num_skipped == 2 and local_skip_count('video') == before + 2
        assert len(messages) == 2 and 'bad.mp4' in messages[1]  # one warning per skip, naming the file
        lines = read_ledger(str(tmp_path / 'ledger.jsonl'))
        assert [(line['kind'], line['source']) for line in lines] == [('video', str(bad))] * 2
        assert lines[0]['reason'].startswith('cannot decode with pyav')  # the path is the source
    finally:
        set_ledger(None)


def _rss_kib() -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise RuntimeError('no VmRSS in /proc/self/status')


@pytest.mark.parametrize('backend', BACKENDS)
def test_no_leak_over_repeated_decodes(video: str, backend: str) -> None:
    pipeline = [SampleFrames(num_frames=8), DecodeVideo(backend=backend)]

    def run(times: int) -> None:
        for _ in range(times):
            results = dict(video_path=video)
            for t in pipeline:
                results = t(results)
            assert results['imgs'].shape == (8, 64, 64, 3)

    run(30)  # warm-up: libraries' lazy allocations and allocator pools
    gc.collect()
    before = _rss_kib()
    run(300)
    gc.collect()
    grown = _rss_kib() - before
    # A leaked reader costs at least its decoded frame pool (hundreds of KiB here): 300 of them show.
    assert grown < 16 * 1024, f'{backend}: RSS grew by {grown} KiB over 300 decodes'


# ------------------------------------------------------------------------------------------------ spatial


def test_resize_and_crop() -> None:
    imgs = np.random.default_rng(0).integers(0, 256, (3, 40, 60, 3), dtype=np.uint8)
    out = ResizeVideo(scale=(30, 20)).transform(dict(imgs=imgs))
    assert out['imgs'].shape == (3, 20, 30, 3) and out['img_shape'] == (20, 30)
    out = ResizeVideo(scale=20, keep_ratio=True).transform(dict(imgs=imgs))
    assert out['imgs'].shape == (3, 20, 30, 3)  # short side 20
    out = ResizeVideo(scale=(100, 30), keep_ratio=True).transform(dict(imgs=imgs))
    assert out['imgs'].shape == (3, 30, 45, 3)  # the short-side bound wins
    flat = np.full((2, 8, 8, 3), 77, dtype=np.uint8)
    assert np.all(ResizeVideo(scale=16).transform(dict(imgs=flat))['imgs'] == 77)
    crop = CenterCropVideo(size=(20, 10)).transform(dict(imgs=imgs))
    assert crop['imgs'].shape == (3, 10, 20, 3) and np.array_equal(crop['imgs'], imgs[:, 15:25, 20:40])
    with pytest.raises(ValueError, match='larger than the frames'):
        CenterCropVideo(size=64).transform(dict(imgs=imgs, video_path='v.mp4'))


def test_flip_mirrors_pixels_and_swaps_words() -> None:
    imgs = np.random.default_rng(0).integers(0, 256, (2, 4, 6, 3), dtype=np.uint8)
    results = dict(
        imgs=imgs,
        text='the square moves left',
        captions=['a circle turns clockwise', 'it turns counterclockwise to the right', 'leftover'],
        question='which way does the circle move?',
        answer='left',
    )
    out = RandomFlipVideo(prob=1.0).transform(dict(results))
    assert np.array_equal(out['imgs'], imgs[:, :, ::-1]) and out['imgs'].flags['C_CONTIGUOUS']
    assert out['text'] == 'the square moves right'
    assert out['captions'] == [
        'a circle turns counterclockwise',
        'it turns clockwise to the left',
        'leftover',
    ]
    assert out['answer'] == 'right' and out['question'] == results['question'] and out['flipped']
    assert RandomFlipVideo(prob=0.0).transform(dict(results))['text'] == results['text']
    random.seed(0)
    flips = sum('flipped' in RandomFlipVideo(prob=0.5).transform(dict(results)) for _ in range(200))
    assert 70 < flips < 130


# ------------------------------------------------------------------------------------------------ packing


def test_pack_shapes_and_fields(video: str) -> None:
    results = SampleFrames(num_frames=4).transform(dict(video_path=video, img_id=0, video_id='video0'))
    results = DecodeVideo().transform(results)
    results.update(
        text='a caption',
        captions=['a caption', 'another'],
        question='what?',
        answer='this',
        question_id=7,
        question_type=2,
    )
    packed = PackVideoTextInputs().transform(results)
    inputs, sample = packed['inputs'], packed['data_samples']
    assert inputs.shape == (3, 4, 64, 64) and inputs.dtype == torch.uint8 and inputs.is_contiguous()
    assert torch.equal(inputs[:, 1], torch.from_numpy(results['imgs'][1]).permute(2, 0, 1))
    assert sample.text == 'a caption' and sample.gt_captions == ['a caption', 'another']
    assert sample.question == 'what?' and sample.gt_answer == 'this'
    assert sample.question_id == 7 and sample.question_type == 2
    assert sample.img_id == 0 and sample.video_id == 'video0' and sample.video_path == video
    assert sample.frame_inds.tolist() == [2, 6, 10, 14] and sample.img_shape == (64, 64)
    bare = PackVideoTextInputs().transform(dict(imgs=results['imgs']))['data_samples']
    assert 'text' not in bare and 'gt_answer' not in bare and 'gt_captions' not in bare
