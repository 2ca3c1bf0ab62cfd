"""OVCocoDataset / OVLVISDataset reliability checks: the annotation file is schema-checked before the
COCO/LVIS api indexes it, and missing images are found by the pre-flight scan (raise, or skip and count)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from toolkit.registry import DATASETS
from toolkit.schema.base import SchemaError
from toolkit.skips import read_ledger, set_ledger
from toolkit.testing.broken_annotations import broken_coco_instances, broken_lvis

COCO = 'annotations/instances_val.json'
LVIS = 'annotations/lvis_v1_val.json'


@pytest.fixture
def data_copy(shapes_tiny: Path, tmp_path: Path) -> Path:
    """The val annotations and images of Shapes World tiny, safe to damage."""
    root = tmp_path / 'sw'
    (root / 'annotations').mkdir(parents=True)
    for rel in (COCO, LVIS):
        shutil.copy(shapes_tiny / rel, root / rel)
    shutil.copytree(shapes_tiny / 'images/val', root / 'images/val')
    return root


def _coco(root: Path, **kwargs: object):  # type: ignore[no-untyped-def]
    cfg = dict(type='OVCocoDataset', data_root=f'{root}/', ann_file=COCO, data_prefix=dict(img='images/val/'))
    return DATASETS.build(dict(cfg, test_mode=True, pipeline=[], **kwargs))


def _lvis(root: Path, **kwargs: object):  # type: ignore[no-untyped-def]
    cfg = dict(type='OVLVISDataset', data_root=f'{root}/', ann_file=LVIS, data_prefix=dict(img='images/'))
    return DATASETS.build(dict(cfg, test_mode=True, pipeline=[], **kwargs))


@pytest.mark.parametrize(
    'fault', ['bbox_negative_width', 'bbox_outside_image', 'annotation_category_id_unknown']
)
def test_malformed_coco_file_fails_before_the_coco_api(data_copy: Path, fault: str) -> None:
    case = next(
        c for c in broken_coco_instances(json.loads((data_copy / COCO).read_text())) if c.fault == fault
    )
    (data_copy / COCO).write_text(json.dumps(case.ann))
    with pytest.raises(SchemaError) as err:
        _coco(data_copy)
    assert err.value.file == str(data_copy / COCO)
    assert err.value.record.startswith(case.record) and err.value.key == case.key


@pytest.mark.parametrize('fault', ['coco_url_escapes', 'frequency_invalid', 'annotation_id_duplicate'])
def test_malformed_lvis_file_fails_before_the_lvis_api(data_copy: Path, fault: str) -> None:
    case = next(c for c in broken_lvis(json.loads((data_copy / LVIS).read_text())) if c.fault == fault)
    (data_copy / LVIS).write_text(json.dumps(case.ann))
    with pytest.raises(SchemaError) as err:
        _lvis(data_copy)
    assert err.value.record.startswith(case.record) and err.value.key == case.key


def test_valid_files_build_with_every_image(data_copy: Path) -> None:
    images = json.loads((data_copy / COCO).read_text())['images']
    assert len(_coco(data_copy)) == len(images)
    assert len(_lvis(data_copy)) == len(images)


def test_missing_image_found_at_build(data_copy: Path, tmp_path: Path) -> None:
    images = json.loads((data_copy / COCO).read_text())['images']
    gone = data_copy / 'images/val' / images[3]['file_name']
    gone.unlink()
    with pytest.raises(
        FileNotFoundError, match=rf'{COCO}: image .*{gone.name} \(image id {images[3]["id"]}\)'
    ):
        _coco(data_copy)
    with pytest.raises(FileNotFoundError, match=rf'{LVIS}: image .*{gone.name}'):
        _lvis(data_copy)
    set_ledger(str(tmp_path / 'ledger.jsonl'))
    try:
        kept = _coco(data_copy, on_missing='skip')
    finally:
        set_ledger(None)
    assert len(kept) == len(images) - 1
    assert [line['source'] for line in read_ledger(str(tmp_path / 'ledger.jsonl'))] == [str(gone)]
    assert len(_coco(data_copy, check_files=False)) == len(images)  # remote storage: no scan


def test_schema_options_reach_the_check(data_copy: Path) -> None:
    ann = json.loads((data_copy / COCO).read_text())
    case = next(
        c for c in broken_coco_instances(ann) if c.fault == 'bbox_outside_image'
    )  # 8 px over the edge
    (data_copy / COCO).write_text(json.dumps(case.ann))
    with pytest.raises(SchemaError, match='bbox_tolerance=1.0 px'):
        _coco(data_copy)
    assert len(_coco(data_copy, schema_options=dict(bbox_tolerance=10.0))) == len(ann['images'])
