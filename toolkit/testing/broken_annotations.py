"""Malformed variants of valid annotation files (COCO instances and captions, LVIS v1, MSR-VTT, MSRVTT-QA),
for the tests of :mod:`toolkit.schema`.

Each function takes a valid parsed file (a Shapes World one in the tests) and returns one
:class:`BrokenAnnotation` per fault: a deep copy with exactly one thing wrong, the fault's name, and
where the error must point (the record, e.g. ``annotations[1]``, and the key). Records are broken at
index 1 (the second), so a message that names the right record is told apart from one naming the first.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

from toolkit.schema.annotations import MAX_CAPTION_CHARS

__all__ = [
    'BrokenAnnotation',
    'broken_coco_captions',
    'broken_coco_instances',
    'broken_lvis',
    'broken_msrvtt_qa',
    'broken_msrvtt_videodatainfo',
]

_HUGE_TEXT = 'word ' * (MAX_CAPTION_CHARS // 5 + 1)  # one "word " past the default limit


@dataclasses.dataclass(frozen=True)
class BrokenAnnotation:
    """One malformed file.

    Attributes:
        fault: what is wrong, e.g. ``'bbox_negative_width'`` (a test id).
        ann: the malformed parsed file.
        record: where the error must point: ``'top level'``, or a record's place (``'annotations[1]'``),
            which the error's record starts with (it adds the id: ``'annotations[1] (id 2)'``).
        key: the key the error must name, None when the record itself is wrong.
    """

    fault: str
    ann: Any
    record: str
    key: str | None


Mutation = Callable[[Any], Any]


def _set(*path_and_value: Any) -> Mutation:
    """Set ``ann[p0][p1]...[pn] = value``."""
    *path, value = path_and_value

    def mutate(ann: Any) -> None:
        target = ann
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = copy.deepcopy(value)

    return mutate


def _drop(*path: Any) -> Mutation:
    """Delete ``ann[p0][p1]...[pn]``."""

    def mutate(ann: Any) -> None:
        target = ann
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]

    return mutate


def _replace(value: Any) -> Mutation:
    """Replace the whole file."""
    return lambda ann: copy.deepcopy(value)


class _Faults:
    def __init__(self, valid: Any) -> None:
        self.valid = valid
        self.cases: list[BrokenAnnotation] = []

    def add(self, fault: str, record: str, key: str | None, mutate: Mutation) -> None:
        ann = copy.deepcopy(self.valid)
        replaced = mutate(ann)
        self.cases.append(BrokenAnnotation(fault, ann if replaced is None else replaced, record, key))


def _second(records: list[Any], name: str) -> int:
    if len(records) < 2:
        raise ValueError(f'a valid file with at least two {name} is needed, got {len(records)}')
    return 1


def _image_faults(faults: _Faults, valid: dict[str, Any], *, file_key: str | None) -> None:
    i = _second(valid['images'], 'images')
    where = f'images[{i}]'
    faults.add('images_missing', 'top level', 'images', _drop('images'))
    faults.add('image_not_an_object', where, None, _set('images', i, 'an image'))
    faults.add('image_id_missing', where, 'id', _drop('images', i, 'id'))
    faults.add('image_id_string', where, 'id', _set('images', i, 'id', str(valid['images'][i]['id'])))
    faults.add('image_id_duplicate', where, 'id', _set('images', i, 'id', valid['images'][0]['id']))
    if file_key is not None:
        faults.add('file_name_missing', where, file_key, _drop('images', i, file_key))
        faults.add('file_name_not_a_string', where, file_key, _set('images', i, file_key, 7))
        faults.add('file_name_absolute', where, file_key, _set('images', i, file_key, '/etc/passwd'))
        faults.add('file_name_parent', where, file_key, _set('images', i, file_key, '../../outside.jpg'))
        faults.add('file_name_empty', where, file_key, _set('images', i, file_key, ''))


def _instance_faults(faults: _Faults, valid: dict[str, Any]) -> None:
    """Annotation and category faults shared by COCO instances and LVIS."""
    faults.add('not_an_object', 'top level', None, _replace([valid]))
    faults.add('annotations_not_a_list', 'top level', 'annotations', _set('annotations', {}))
    faults.add('categories_missing', 'top level', 'categories', _drop('categories'))
    c = _second(valid['categories'], 'categories')
    cat = f'categories[{c}]'
    faults.add('category_id_missing', cat, 'id', _drop('categories', c, 'id'))
    faults.add('category_id_duplicate', cat, 'id', _set('categories', c, 'id', valid['categories'][0]['id']))
    faults.add('category_name_empty', cat, 'name', _set('categories', c, 'name', ' '))
    faults.add(
        'category_name_duplicate', cat, 'name', _set('categories', c, 'name', valid['categories'][0]['name'])
    )

    i = _second(valid['annotations'], 'annotations')
    ann = valid['annotations'][i]
    where = f'annotations[{i}]'
    image = next(im for im in valid['images'] if im['id'] == ann['image_id'])
    x, y, w, h = ann['bbox']
    unknown_image = max(im['id'] for im in valid['images']) + 1000
    unknown_category = max(c['id'] for c in valid['categories']) + 1000
    faults.add('annotation_not_an_object', where, None, _set('annotations', i, [x, y, w, h]))
    faults.add('annotation_id_missing', where, 'id', _drop('annotations', i, 'id'))
    faults.add('annotation_id_float', where, 'id', _set('annotations', i, 'id', float(ann['id'])))
    faults.add(
        'annotation_id_duplicate', where, 'id', _set('annotations', i, 'id', valid['annotations'][0]['id'])
    )
    faults.add(
        'annotation_image_id_unknown', where, 'image_id', _set('annotations', i, 'image_id', unknown_image)
    )
    faults.add(
        'annotation_image_id_string',
        where,
        'image_id',
        _set('annotations', i, 'image_id', str(ann['image_id'])),
    )
    faults.add(
        'annotation_category_id_unknown',
        where,
        'category_id',
        _set('annotations', i, 'category_id', unknown_category),
    )
    faults.add('annotation_category_id_missing', where, 'category_id', _drop('annotations', i, 'category_id'))
    faults.add('bbox_missing', where, 'bbox', _drop('annotations', i, 'bbox'))
    faults.add('bbox_three_numbers', where, 'bbox', _set('annotations', i, 'bbox', [x, y, w]))
    faults.add('bbox_not_numbers', where, 'bbox', _set('annotations', i, 'bbox', [str(x), y, w, h]))
    faults.add('bbox_bool', where, 'bbox', _set('annotations', i, 'bbox', [True, y, w, h]))
    faults.add('bbox_negative_width', where, 'bbox', _set('annotations', i, 'bbox', [x, y, -w, h]))
    faults.add('bbox_negative_height', where, 'bbox', _set('annotations', i, 'bbox', [x, y, w, -h]))
    faults.add('bbox_nan', where, 'bbox', _set('annotations', i, 'bbox', [x, y, float('nan'), h]))
    faults.add(
        'bbox_outside_image', where, 'bbox', _set('annotations', i, 'bbox', [image['width'] - 2, y, 10, h])
    )
    faults.add('bbox_negative_corner', where, 'bbox', _set('annotations', i, 'bbox', [-5, y, w, h]))
    faults.add('area_missing', where, 'area', _drop('annotations', i, 'area'))
    faults.add('area_negative', where, 'area', _set('annotations', i, 'area', -1.0))
    faults.add('iscrowd_invalid', where, 'iscrowd', _set('annotations', i, 'iscrowd', 2))
    faults.add(
        'segmentation_a_string', where, 'segmentation', _set('annotations', i, 'segmentation', 'polygon')
    )


def broken_coco_instances(valid: dict[str, Any]) -> list[BrokenAnnotation]:
    """Malformed variants of a valid COCO instances file."""
    faults = _Faults(valid)
    _image_faults(faults, valid, file_key='file_name')
    i = _second(valid['images'], 'images')
    faults.add('image_width_missing', f'images[{i}]', 'width', _drop('images', i, 'width'))
    faults.add('image_height_negative', f'images[{i}]', 'height', _set('images', i, 'height', -5))
    _instance_faults(faults, valid)
    return faults.cases


def broken_lvis(
    valid: dict[str, Any], url_prefix: str = 'http://images.cocodataset.org/'
) -> list[BrokenAnnotation]:
    """Malformed variants of a valid LVIS v1 file (images by ``coco_url``, category ``frequency``)."""
    faults = _Faults(valid)
    _image_faults(faults, valid, file_key=None)
    i = _second(valid['images'], 'images')
    where = f'images[{i}]'
    faults.add('coco_url_missing', where, 'coco_url', _drop('images', i, 'coco_url'))
    faults.add(
        'coco_url_other_host', where, 'coco_url', _set('images', i, 'coco_url', 'https://example.com/a.jpg')
    )
    faults.add(
        'coco_url_escapes', where, 'coco_url', _set('images', i, 'coco_url', url_prefix + '../../etc/passwd')
    )
    faults.add(
        'neg_category_ids_unknown', where, 'neg_category_ids', _set('images', i, 'neg_category_ids', [-7])
    )
    faults.add(
        'not_exhaustive_category_ids_not_a_list',
        where,
        'not_exhaustive_category_ids',
        _set('images', i, 'not_exhaustive_category_ids', 3),
    )
    c = _second(valid['categories'], 'categories')
    faults.add('frequency_invalid', f'categories[{c}]', 'frequency', _set('categories', c, 'frequency', 'x'))
    _instance_faults(faults, valid)
    return faults.cases


def broken_coco_captions(valid: dict[str, Any]) -> list[BrokenAnnotation]:
    """Malformed variants of a valid COCO captions file."""
    faults = _Faults(valid)
    _image_faults(faults, valid, file_key='file_name')
    faults.add('not_an_object', 'top level', None, _replace(valid['annotations']))
    faults.add('annotations_missing', 'top level', 'annotations', _drop('annotations'))
    i = _second(valid['annotations'], 'annotations')
    ann = valid['annotations'][i]
    where = f'annotations[{i}]'
    unknown_image = max(im['id'] for im in valid['images']) + 1000
    faults.add('annotation_not_an_object', where, None, _set('annotations', i, ann['caption']))
    faults.add(
        'annotation_image_id_unknown', where, 'image_id', _set('annotations', i, 'image_id', unknown_image)
    )
    faults.add('annotation_image_id_missing', where, 'image_id', _drop('annotations', i, 'image_id'))
    faults.add('caption_missing', where, 'caption', _drop('annotations', i, 'caption'))
    faults.add('caption_not_a_string', where, 'caption', _set('annotations', i, 'caption', 3))
    faults.add('caption_empty', where, 'caption', _set('annotations', i, 'caption', ''))
    faults.add('caption_whitespace', where, 'caption', _set('annotations', i, 'caption', ' \n\t'))
    faults.add('caption_huge', where, 'caption', _set('annotations', i, 'caption', _HUGE_TEXT))
    if 'id' in ann:
        duplicate = valid['annotations'][0]['id']
        faults.add('annotation_id_duplicate', where, 'id', _set('annotations', i, 'id', duplicate))
    return faults.cases


def broken_msrvtt_videodatainfo(valid: dict[str, Any]) -> list[BrokenAnnotation]:
    """Malformed variants of a valid MSR-VTT ``*_videodatainfo.json``."""
    faults = _Faults(valid)
    faults.add('not_an_object', 'top level', None, _replace(valid['videos']))
    faults.add('sentences_missing', 'top level', 'sentences', _drop('sentences'))
    faults.add('videos_not_a_list', 'top level', 'videos', _set('videos', {}))
    v = _second(valid['videos'], 'videos')
    video = f'videos[{v}]'
    faults.add('video_not_an_object', video, None, _set('videos', v, valid['videos'][v]['video_id']))
    faults.add('video_id_missing', video, 'video_id', _drop('videos', v, 'video_id'))
    faults.add('video_id_escapes', video, 'video_id', _set('videos', v, 'video_id', '../../etc/passwd'))
    faults.add('video_id_absolute', video, 'video_id', _set('videos', v, 'video_id', '/tmp/video1'))
    faults.add(
        'video_id_duplicate', video, 'video_id', _set('videos', v, 'video_id', valid['videos'][0]['video_id'])
    )
    faults.add('id_string', video, 'id', _set('videos', v, 'id', str(valid['videos'][v]['id'])))
    faults.add('id_duplicate', video, 'id', _set('videos', v, 'id', valid['videos'][0]['id']))
    faults.add('split_missing', video, 'split', _drop('videos', v, 'split'))
    faults.add('category_string', video, 'category', _set('videos', v, 'category', 'music'))
    s = _second(valid['sentences'], 'sentences')
    sentence = f'sentences[{s}]'
    faults.add('sentence_not_an_object', sentence, None, _set('sentences', s, 'a caption'))
    faults.add('sentence_video_unknown', sentence, 'video_id', _set('sentences', s, 'video_id', 'video99999'))
    faults.add('sentence_video_integer', sentence, 'video_id', _set('sentences', s, 'video_id', 1))
    faults.add('caption_missing', sentence, 'caption', _drop('sentences', s, 'caption'))
    faults.add('caption_empty', sentence, 'caption', _set('sentences', s, 'caption', '  '))
    faults.add('caption_huge', sentence, 'caption', _set('sentences', s, 'caption', _HUGE_TEXT))
    if 'sen_id' in valid['sentences'][s]:
        duplicate = valid['sentences'][0]['sen_id']
        faults.add('sen_id_duplicate', sentence, 'sen_id', _set('sentences', s, 'sen_id', duplicate))
    return faults.cases


def broken_msrvtt_qa(valid: list[dict[str, Any]]) -> list[BrokenAnnotation]:
    """Malformed variants of a valid MSRVTT-QA file (a list of questions)."""
    faults = _Faults(valid)
    faults.add('not_a_list', 'top level', None, _replace({'questions': valid}))
    q = _second(valid, 'questions')
    where = f'[{q}]'
    faults.add('question_not_an_object', where, None, _set(q, valid[q]['question']))
    faults.add('id_missing', where, 'id', _drop(q, 'id'))
    faults.add('id_duplicate', where, 'id', _set(q, 'id', valid[0]['id']))
    faults.add('video_id_missing', where, 'video_id', _drop(q, 'video_id'))
    faults.add('video_id_name', where, 'video_id', _set(q, 'video_id', f'video{valid[q]["video_id"]}'))
    faults.add('video_id_float', where, 'video_id', _set(q, 'video_id', float(valid[q]['video_id'])))
    faults.add('question_empty', where, 'question', _set(q, 'question', ''))
    faults.add('question_huge', where, 'question', _set(q, 'question', _HUGE_TEXT))
    faults.add('answer_missing', where, 'answer', _drop(q, 'answer'))
    faults.add('answer_not_a_string', where, 'answer', _set(q, 'answer', 3))
    faults.add('category_id_string', where, 'category_id', _set(q, 'category_id', 'what'))
    return faults.cases
