"""toolkit.schema: the real Shapes World files pass; every generated fault
(toolkit.testing.broken_annotations) is rejected by a SchemaError naming the file, the record and the key;
the pre-flight scan finds missing files, or drops and counts them."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from toolkit.schema.annotations import (
    check_coco_captions,
    check_coco_instances,
    check_lvis,
    check_msrvtt_qa,
    check_msrvtt_videodatainfo,
)
from toolkit.schema.base import SchemaError, check_relative_path
from toolkit.schema.files import check_files_exist, load_checked_json, load_json
from toolkit.skips import read_ledger, set_ledger
from toolkit.testing.broken_annotations import (
    BrokenAnnotation,
    broken_coco_captions,
    broken_coco_instances,
    broken_lvis,
    broken_msrvtt_qa,
    broken_msrvtt_videodatainfo,
)

Check = Callable[..., None]
Generator = Callable[[Any], list[BrokenAnnotation]]
FORMATS: dict[str, tuple[str, Check, Generator]] = {
    'coco_captions': ('annotations/captions_train.json', check_coco_captions, broken_coco_captions),
    'coco_instances': ('annotations/instances_train.json', check_coco_instances, broken_coco_instances),
    'lvis': ('annotations/lvis_v1_train.json', check_lvis, broken_lvis),
    'msrvtt': (
        'msrvtt/train_val_videodatainfo.json',
        check_msrvtt_videodatainfo,
        broken_msrvtt_videodatainfo,
    ),
    'msrvtt_qa': ('msrvtt/train_qa.json', check_msrvtt_qa, broken_msrvtt_qa),
}
REAL_FILES = [
    ('annotations/captions_train.json', check_coco_captions),
    ('annotations/captions_val.json', check_coco_captions),
    ('annotations/captions_test.json', check_coco_captions),
    ('annotations/instances_train.json', check_coco_instances),
    ('annotations/instances_train_base.json', check_coco_instances),
    ('annotations/instances_val.json', check_coco_instances),
    ('annotations/instances_test.json', check_coco_instances),
    ('annotations/lvis_v1_train.json', check_lvis),
    ('annotations/lvis_v1_val.json', check_lvis),
    ('msrvtt/train_val_videodatainfo.json', check_msrvtt_videodatainfo),
    ('msrvtt/test_videodatainfo.json', check_msrvtt_videodatainfo),
    ('msrvtt/train_qa.json', check_msrvtt_qa),
    ('msrvtt/val_qa.json', check_msrvtt_qa),
    ('msrvtt/test_qa.json', check_msrvtt_qa),
]


@pytest.mark.parametrize('rel,check', REAL_FILES, ids=[rel for rel, _ in REAL_FILES])
def test_real_shapes_world_files_pass(shapes_tiny: Path, rel: str, check: Check) -> None:
    ann = load_checked_json(str(shapes_tiny / rel), check)
    assert ann  # parsed, checked, returned


@pytest.mark.parametrize('fmt', sorted(FORMATS))
def test_every_fault_names_file_record_and_key(shapes_tiny: Path, tmp_path: Path, fmt: str) -> None:
    rel, check, broken = FORMATS[fmt]
    cases = broken(json.loads((shapes_tiny / rel).read_text()))
    assert len({case.fault for case in cases}) == len(cases) >= 10
    wrong = []
    for case in cases:
        path = tmp_path / f'{case.fault}.json'
        path.write_text(json.dumps(case.ann))  # through a file, as the data sets read them (NaN included)
        try:
            load_checked_json(str(path), check)
        except SchemaError as err:
            message = str(err)
            ok = (
                err.file == str(path)
                and message.startswith(f'{path}: {err.record}')
                and err.record.startswith(case.record)
                and err.key == case.key
                and (case.key is None or repr(case.key) in message)
                and len(message) < 400  # a huge caption is cut in the message
            )
            if not ok:
                wrong.append(f'{case.fault}: expected {case.record} / {case.key!r}, got {message}')
        else:
            wrong.append(f'{case.fault}: accepted')
    assert not wrong, '\n'.join(wrong)


def test_messages_say_what_was_expected(shapes_tiny: Path) -> None:
    by_fault = {
        c.fault: c
        for c in broken_coco_instances(json.loads((shapes_tiny / FORMATS['coco_instances'][0]).read_text()))
    }
    expected = {
        'bbox_negative_width': r"annotations\[1\] \(id 2\), key 'bbox': width and height must be numbers",
        'bbox_outside_image': r"key 'bbox': \[.*\] lies outside image \d+ \(128x128, bbox_tolerance=1.0 px\)",
        'annotation_image_id_unknown': r"key 'image_id': \d+ is not an id in \"images\" \(unknown image id\)",
        'annotation_category_id_unknown': r'unknown category id',
        'annotation_id_duplicate': r"\[1\] \(id 1\), key 'id': duplicate id 1 \(also annotations\[0\]\)",
        'file_name_absolute': r"images\[1\] \(id 2\), key 'file_name': '/etc/passwd' escapes the data root",
        'file_name_parent': r"'\.\./\.\./outside\.jpg' escapes the data root \(a \"\.\.\" component",
        'image_id_string': r"images\[1\] \(id '2'\), key 'id': expected an integer id, got str '2'",
        'bbox_missing': r"key 'bbox': expected 4 numbers \[x, y, w, h\], got nothing \(key missing\)",
    }
    for fault, pattern in expected.items():
        with pytest.raises(SchemaError, match=pattern):
            check_coco_instances(by_fault[fault].ann, source='instances.json')


def test_box_tolerance_and_empty_boxes(shapes_tiny: Path) -> None:
    ann = json.loads((shapes_tiny / 'annotations/instances_train.json').read_text())
    image = next(im for im in ann['images'] if im['id'] == ann['annotations'][0]['image_id'])
    box = ann['annotations'][0]['bbox']
    ann['annotations'][0]['bbox'] = [image['width'] - 10, box[1], 10.5, box[3]]  # 0.5 px over: rounding
    check_coco_instances(ann, source='x.json')
    ann['annotations'][0]['bbox'] = [image['width'] - 10, box[1], 13, box[3]]  # 3 px over
    with pytest.raises(SchemaError, match='lies outside'):
        check_coco_instances(ann, source='x.json')
    check_coco_instances(ann, source='x.json', bbox_tolerance=5.0)
    check_coco_instances(ann, source='x.json', bbox_tolerance=math.inf)
    # A zero height, as COCO train2017's annotation 918, is degenerate but well formed.
    ann['annotations'][0]['bbox'] = [box[0], box[1], box[2], 0.0]
    check_coco_instances(ann, source='x.json')
    with pytest.raises(SchemaError, match=r'empty box \(allow_empty_boxes=False\)'):
        check_coco_instances(ann, source='x.json', allow_empty_boxes=False)


def test_caption_limit_is_configurable(shapes_tiny: Path) -> None:
    ann = json.loads((shapes_tiny / 'annotations/captions_train.json').read_text())
    longest = max(len(a['caption']) for a in ann['annotations'])
    check_coco_captions(ann, source='c.json', max_caption_chars=longest)
    with pytest.raises(SchemaError, match=f'exceeds max_caption_chars={longest - 1}'):
        check_coco_captions(ann, source='c.json', max_caption_chars=longest - 1)


@pytest.mark.parametrize(
    'name,problem',
    [
        ('a/b.jpg', None),
        ('b..c.jpg', None),  # dots inside a name are fine
        ('', 'empty'),
        ('/abs/a.jpg', 'absolute'),
        ('C:\\data\\a.jpg', 'absolute'),
        ('a/../../b.jpg', '".." component'),
        ('..\\b.jpg', '".." component'),
        (None, 'expected a string'),
    ],
)
def test_relative_path_rule(name: Any, problem: str | None) -> None:
    reason = check_relative_path(name)
    assert (reason is None) if problem is None else (reason is not None and problem in reason)


def test_invalid_or_missing_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / 'cut.json').write_text('{"images": [')
    with pytest.raises(SchemaError, match=r'cut\.json: not valid JSON'):
        load_json(str(tmp_path / 'cut.json'))
    with pytest.raises(FileNotFoundError, match=r'annotation file .*absent\.json does not exist'):
        load_json(str(tmp_path / 'absent.json'))


# ---------------------------------------------------------------------------------------------- pre-flight
def _records(folder: Path, count: int) -> list[dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        (folder / f'{i}.jpg').write_bytes(b'x')
        records.append(dict(img_path=str(folder / f'{i}.jpg'), img_id=i))
    return records


@pytest.mark.parametrize('count', [3, 40])  # one stat per file / one listing of the folder
def test_preflight_names_annotation_file_record_and_path(tmp_path: Path, count: int) -> None:
    records = _records(tmp_path / 'images', count)
    assert check_files_exist(records, ann_file='ann.json') == records
    (tmp_path / 'images' / '2.jpg').unlink()
    expected = rf'ann\.json: image {tmp_path}/images/2\.jpg \(image id 2\) does not exist'
    with pytest.raises(FileNotFoundError, match=expected):
        check_files_exist(records, ann_file='ann.json')


def test_preflight_skip_drops_and_counts(tmp_path: Path) -> None:
    records = _records(tmp_path / 'images', 40)
    for i in (5, 7):
        (tmp_path / 'images' / f'{i}.jpg').unlink()
    ledger = tmp_path / 'ledger.jsonl'
    set_ledger(str(ledger))
    try:
        kept = check_files_exist(records, ann_file='ann.json', on_missing='skip')
    finally:
        set_ledger(None)
    assert [r['img_id'] for r in kept] == [i for i in range(40) if i not in (5, 7)]
    lines = read_ledger(str(ledger))
    assert [(line['kind'], line['record_id']) for line in lines] == [('image', 5), ('image', 7)]
    assert lines[0]['source'].endswith('images/5.jpg') and 'ann.json' in lines[0]['reason']


def test_preflight_refuses_remote_paths_and_bad_policy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='set check_files=False for remote storage'):
        check_files_exist([dict(img_path='s3://bucket/a.jpg', img_id=0)], ann_file='ann.json')
    with pytest.raises(ValueError, match="on_missing must be 'raise' or 'skip'"):
        check_files_exist([], ann_file='ann.json', on_missing='ignore')


def test_optional_ids_are_checked_where_present() -> None:
    ann = {
        'images': [{'id': 1, 'file_name': 'a.jpg'}],
        'annotations': [
            {'image_id': 1, 'caption': 'no id here'},
            {'image_id': 1, 'caption': 'a red circle', 'id': 5},
            {'image_id': 1, 'caption': 'a blue star', 'id': 5},
        ],
    }
    with pytest.raises(
        SchemaError, match=r"annotations\[2\] \(id 5\), key 'id': duplicate id 5 \(also annotations\[1\]\)"
    ):
        check_coco_captions(ann, source='c.json')
    del ann['annotations'][2]['id']
    check_coco_captions(ann, source='c.json')
