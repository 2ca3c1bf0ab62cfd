"""ImageCaptionDataset's reliability checks: the annotation file is schema-checked at build, missing images
are found by the pre-flight scan (raise, or skip and count), and LoadImageSafely's skips are refetched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from toolkit.registry import DATASETS
from toolkit.schema.base import SchemaError
from toolkit.skips import read_ledger, set_ledger
from toolkit.testing.broken_annotations import broken_coco_captions
from toolkit.testing.broken_image import truncated
from toolkit.transforms import ImageDecodeError

ANN = 'annotations/captions_train.json'


@pytest.fixture
def data_copy(shapes_tiny: Path, tmp_path: Path) -> Path:
    """The train captions and images of Shapes World tiny, safe to damage."""
    root = tmp_path / 'sw'
    (root / 'annotations').mkdir(parents=True)
    shutil.copy(shapes_tiny / ANN, root / ANN)
    shutil.copytree(shapes_tiny / 'images/train', root / 'images/train')
    return root


@pytest.fixture
def ledger(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / 'ledger.jsonl'
    set_ledger(str(path))
    yield path
    set_ledger(None)


def _build(root: Path, pipeline: list | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    cfg = dict(
        type='ImageCaptionDataset',
        data_root=str(root),
        ann_file=ANN,
        data_prefix=dict(img_path='images/train/'),
    )
    return DATASETS.build(dict(cfg, pipeline=pipeline or [], **kwargs))


@pytest.mark.parametrize('fault', ['caption_huge', 'annotation_image_id_unknown', 'file_name_parent'])
def test_malformed_file_fails_the_build_naming_record_and_key(data_copy: Path, fault: str) -> None:
    case = next(
        c for c in broken_coco_captions(json.loads((data_copy / ANN).read_text())) if c.fault == fault
    )
    (data_copy / ANN).write_text(json.dumps(case.ann))
    with pytest.raises(SchemaError) as err:
        _build(data_copy)
    assert err.value.file == str(data_copy / ANN)
    assert err.value.record.startswith(case.record) and err.value.key == case.key


def test_missing_image_found_at_build(data_copy: Path, ledger: Path) -> None:
    images = json.loads((data_copy / ANN).read_text())['images']
    gone = data_copy / 'images/train' / images[5]['file_name']
    gone.unlink()
    with pytest.raises(
        FileNotFoundError, match=rf'{ANN}: image .*{gone.name} \(image id {images[5]["id"]}\)'
    ):
        _build(data_copy)
    kept = _build(data_copy, on_missing='skip')
    assert len(kept) == len(images) - 1
    assert [(line['kind'], line['source']) for line in read_ledger(str(ledger))] == [('image', str(gone))]
    assert len(_build(data_copy, check_files=False)) == len(images)  # remote storage: no scan


def test_truncated_image_is_skipped_counted_and_replaced(data_copy: Path, ledger: Path) -> None:
    pipeline = [
        dict(type='LoadImageSafely', on_error='skip'),
        dict(type='Resize', scale=(32, 32), keep_ratio=False),
        dict(type='SampleCaption'),
        dict(type='PackImageTextInputs'),
    ]
    dataset = _build(data_copy, pipeline=pipeline)
    broken = Path(dataset.get_data_info(2)['img_path'])
    broken.write_bytes(truncated(broken.read_bytes()))
    item = dataset[2]  # BaseDataset draws another sample for the skipped one
    assert (
        item['inputs'].shape == (3, 32, 32)
        and item['data_samples'].img_id != dataset.get_data_info(2)['img_id']
    )
    lines = read_ledger(str(ledger))
    assert len(lines) >= 1 and all(line['source'] == str(broken) for line in lines)
    assert lines[0]['sample_idx'] == 2 and 'truncated JPEG' in lines[0]['reason']
    strict = _build(data_copy, pipeline=[dict(type='LoadImageSafely')] + pipeline[1:])
    with pytest.raises(ImageDecodeError, match=rf'{broken.name}: truncated JPEG'):
        strict[2]


def test_schema_options_reach_the_check(data_copy: Path) -> None:
    case = next(
        c
        for c in broken_coco_captions(json.loads((data_copy / ANN).read_text()))
        if c.fault == 'caption_huge'
    )
    (data_copy / ANN).write_text(json.dumps(case.ann))
    with pytest.raises(SchemaError, match='exceeds max_caption_chars=10000'):
        _build(data_copy)
    assert len(_build(data_copy, schema_options=dict(max_caption_chars=20_000))) > 0
