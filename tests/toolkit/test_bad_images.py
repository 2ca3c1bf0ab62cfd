"""LoadImageSafely on the generated corpus of broken images (toolkit.testing.broken_image): every case either
loads (good files, wrong but harmless extensions) or raises an ImageDecodeError naming the file and the
reason, or with on_error='skip' is counted in the skip ledger; the bomb is refused from its header."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from toolkit.registry import TRANSFORMS
from toolkit.skips import read_ledger, set_ledger
from toolkit.testing.broken_image import BrokenImage, write_broken_images
from toolkit.transforms import DEFAULT_MAX_PIXELS, ImageDecodeError, LoadImageSafely, image_header

CASES = [
    'ok.jpg',
    'ok.png',
    'ok.bmp',
    'png_named.jpg',
    'jpeg_named.png',
    'text.jpg',
    'empty.jpg',
    'truncated.jpg',
    'truncated.png',
    'truncated_header.jpg',
    'corrupt_header.jpg',
    'corrupt.png',
    'huge.png',
    'huge_header.jpg',
]


@pytest.fixture(scope='module')
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BrokenImage]:
    return write_broken_images(tmp_path_factory.mktemp('broken_images'))


def test_corpus_is_complete(corpus: dict[str, BrokenImage]) -> None:
    assert sorted(corpus) == sorted(CASES)  # a new case must be listed here, and so tested


@pytest.mark.parametrize('name', CASES)
@pytest.mark.parametrize('backend', ['cv2', 'pillow'])
def test_each_case_loads_or_names_file_and_reason(
    corpus: dict[str, BrokenImage], name: str, backend: str
) -> None:
    case = corpus[name]
    load = TRANSFORMS.build(dict(type='LoadImageSafely', imdecode_backend=backend))
    if case.loads:
        out = load(dict(img_path=str(case.path)))
        assert out['img'].shape == (48, 48, 3) and out['img'].dtype == np.uint8
        assert out['img_shape'] == out['ori_shape'] == (48, 48)
        return
    assert case.reason is not None
    with pytest.raises(ImageDecodeError, match=case.reason) as err:
        load(dict(img_path=str(case.path)))
    assert str(err.value).startswith(f'{case.path}: ') and err.value.path == str(case.path)
    assert err.value.reason and err.value.reason in str(err.value)


def test_content_decides_not_the_extension(corpus: dict[str, BrokenImage]) -> None:
    load = LoadImageSafely()
    as_png = load(dict(img_path=str(corpus['ok.png'].path)))['img']
    np.testing.assert_array_equal(load(dict(img_path=str(corpus['png_named.jpg'].path)))['img'], as_png)
    with pytest.raises(ImageDecodeError, match='text.jpg: not an image'):
        load(dict(img_path=str(corpus['text.jpg'].path)))


def test_bomb_is_refused_from_its_header(corpus: dict[str, BrokenImage]) -> None:
    path = corpus['huge.png'].path
    data = path.read_bytes()
    assert len(data) < 1_000_000 and image_header(data) == ('PNG', 30000, 30000)
    start = time.perf_counter()
    with pytest.raises(
        ImageDecodeError, match=r'30000x30000 = 900,000,000 pixels exceeds max_pixels=89,478,485'
    ):
        LoadImageSafely()(dict(img_path=str(path)))
    assert time.perf_counter() - start < 1.0  # decoding would allocate 2.7 GB and take seconds
    assert DEFAULT_MAX_PIXELS == 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS


def test_max_pixels_is_configurable(corpus: dict[str, BrokenImage]) -> None:
    path = str(corpus['ok.jpg'].path)
    assert LoadImageSafely(max_pixels=48 * 48)(dict(img_path=path))['img'].shape == (48, 48, 3)
    with pytest.raises(ImageDecodeError, match='48x48 = 2,304 pixels exceeds max_pixels=2,303'):
        LoadImageSafely(max_pixels=48 * 48 - 1)(dict(img_path=path))


def test_skip_returns_none_and_counts_every_case(corpus: dict[str, BrokenImage], tmp_path: Path) -> None:
    ledger = tmp_path / 'ledger.jsonl'
    set_ledger(str(ledger))
    load = LoadImageSafely(on_error='skip')
    try:
        broken = [case for case in corpus.values() if not case.loads]
        for index, case in enumerate(broken):
            assert load(dict(img_path=str(case.path), sample_idx=index)) is None
        assert load(dict(img_path=str(corpus['ok.jpg'].path), sample_idx=99)) is not None
    finally:
        set_ledger(None)
    lines = read_ledger(str(ledger))
    assert [(line['kind'], line['source'], line['sample_idx']) for line in lines] == [
        ('image', str(case.path), index) for index, case in enumerate(broken)
    ]
    assert all(line['reason'] for line in lines)


def test_missing_file_and_arguments(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match=r'nowhere\.jpg: file does not exist'):
        LoadImageSafely()(dict(img_path=str(tmp_path / 'nowhere.jpg')))
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        LoadImageSafely(on_error='ignore')
    with pytest.raises(ValueError, match='max_pixels must be positive'):
        LoadImageSafely(max_pixels=0)


def test_backend_args_reach_the_file_backend(corpus: dict[str, BrokenImage]) -> None:
    load = TRANSFORMS.build(dict(type='LoadImageSafely', backend_args=dict(backend='local')))
    assert load.backend_args == dict(backend='local')
    assert load(dict(img_path=str(corpus['ok.jpg'].path)))['img'].shape == (48, 48, 3)


def test_error_survives_a_worker_round_trip() -> None:
    err = pickle.loads(pickle.dumps(ImageDecodeError('a.jpg: empty file', path='a.jpg', reason='empty file')))
    assert (str(err), err.path, err.reason) == ('a.jpg: empty file', 'a.jpg', 'empty file')
    assert str(ImageDecodeError('message only')) == 'message only'  # how DataLoader re-raises it
