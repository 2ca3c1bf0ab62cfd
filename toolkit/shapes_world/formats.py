"""Writers for the real annotation formats: COCO captions/instances, LVIS v1, OV-COCO split, MSRVTT(-QA).

What follows the originals and what differs:

* COCO: ``images`` carry ``id, file_name, width, height`` (``file_name`` relative to ``images/<split>/``),
  instances add ``segmentation`` (one polygon, the exact shape outline: shapes never overlap),
  ``area`` (polygon area), ``iscrowd: 0``; ``supercategory`` is the shape name.
* LVIS v1: images have no ``file_name`` but a ``coco_url`` ``http://images.cocodataset.org/<split>/<file>``,
  which mmdet's ``LVISV1Dataset`` turns into ``<split>/<file>``. Annotation is exhaustive here, so
  ``not_exhaustive_category_ids`` is empty and ``neg_category_ids`` lists every category absent from the
  image. Categories carry the *training* ``image_count``/``instance_count`` in both files (as LVIS does) and
  the LVIS frequency rule: ``r`` <= 10 training images, ``c`` 11-100, ``f`` > 100. ``synset`` is made up
  (``red_circle.n.01``); ``synonyms`` is ``[name with underscores]``.
* OV-COCO: ``instances_train_base.json`` keeps every image and category but drops novel annotations.
* MSRVTT: ``videos`` / ``sentences`` as in ``train_val_videodatainfo.json``; QA entries as MSRVTT-QA with an
  integer ``video_id`` (the number in ``videoN``) and the question type as ``category_id``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from toolkit.shapes_world.scene import CATEGORIES, NOVEL_CATEGORIES, category_id, category_name

__all__ = [
    'LVIS_URL_PREFIX',
    'build_tokenizer',
    'coco_captions',
    'coco_categories',
    'coco_instances',
    'lvis_frequency',
    'lvis_instances',
    'ov_split',
    'write_json',
]

LVIS_URL_PREFIX = 'http://images.cocodataset.org/'
LICENSES = [
    {'id': 1, 'name': 'CC0 1.0 (synthetic data)', 'url': 'https://creativecommons.org/publicdomain/zero/1.0/'}
]


def write_json(path: str, obj: Any) -> None:
    """Write compact JSON atomically (a ``.tmp`` file renamed into place)."""
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, separators=(',', ':'))
    os.replace(tmp, path)


def coco_categories() -> list[dict[str, Any]]:
    """The 48 COCO categories (ids 1..48, ``supercategory`` = shape)."""
    return [{'id': category_id(c, s), 'name': category_name(c, s), 'supercategory': s} for c, s in CATEGORIES]


def coco_captions(
    info: dict[str, Any], images: Sequence[dict[str, Any]], captions: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """A COCO captions file; ``images`` are ``{id, file_name, width, height}`` dicts."""
    return {'info': info, 'licenses': LICENSES, 'images': list(images), 'annotations': list(captions)}


def coco_instances(
    info: dict[str, Any],
    images: Sequence[dict[str, Any]],
    anns: Iterable[dict[str, Any]],
    *,
    drop_category_ids: Iterable[int] = (),
) -> dict[str, Any]:
    """A COCO instances file; annotations of ``drop_category_ids`` are removed (images are kept)."""
    drop = set(drop_category_ids)
    kept = [a for a in anns if a['category_id'] not in drop]
    return {
        'info': info,
        'licenses': LICENSES,
        'images': list(images),
        'annotations': kept,
        'categories': coco_categories(),
    }


def lvis_frequency(image_count: int) -> str:
    """LVIS frequency group of a category seen in ``image_count`` training images."""
    return 'r' if image_count <= 10 else ('c' if image_count <= 100 else 'f')


def _lvis_categories(train_anns: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    images: dict[int, set[int]] = {}
    instances: dict[int, int] = {}
    for ann in train_anns:
        images.setdefault(ann['category_id'], set()).add(ann['image_id'])
        instances[ann['category_id']] = instances.get(ann['category_id'], 0) + 1
    cats = []
    for c, s in CATEGORIES:
        cid = category_id(c, s)
        n_img = len(images.get(cid, ()))
        cats.append(
            {
                'id': cid,
                'name': category_name(c, s),
                'synset': f'{c}_{s}.n.01',
                'synonyms': [f'{c}_{s}'],
                'def': f'a {s} shape coloured {c}',
                'frequency': lvis_frequency(n_img),
                'image_count': n_img,
                'instance_count': instances.get(cid, 0),
            }
        )
    return cats


def lvis_instances(
    info: dict[str, Any],
    split: str,
    images: Sequence[dict[str, Any]],
    anns: Sequence[dict[str, Any]],
    train_anns: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """An LVIS v1 file for ``split`` whose category statistics come from ``train_anns``."""
    all_ids = [category_id(c, s) for c, s in CATEGORIES]
    present: dict[int, set[int]] = {}
    for ann in anns:
        present.setdefault(ann['image_id'], set()).add(ann['category_id'])
    lvis_images = [
        {
            'id': img['id'],
            'width': img['width'],
            'height': img['height'],
            'license': 1,
            'flickr_url': '',
            'coco_url': f'{LVIS_URL_PREFIX}{split}/{img["file_name"]}',
            'date_captured': '',
            'not_exhaustive_category_ids': [],
            'neg_category_ids': [c for c in all_ids if c not in present.get(img['id'], set())],
        }
        for img in images
    ]
    keys = ('id', 'image_id', 'category_id', 'bbox', 'area', 'segmentation')  # LVIS has no iscrowd
    lvis_anns = [{k: a[k] for k in keys} for a in anns]
    return {
        'info': info,
        'licenses': LICENSES,
        'images': lvis_images,
        'annotations': lvis_anns,
        'categories': _lvis_categories(train_anns),
    }


def ov_split() -> dict[str, list[Any]]:
    """The fixed open-vocabulary base/novel split (names and ids, in id order)."""
    novel = set(NOVEL_CATEGORIES)
    base = [cs for cs in CATEGORIES if cs not in novel]
    novel_sorted = [cs for cs in CATEGORIES if cs in novel]
    return {
        'base': [category_name(*cs) for cs in base],
        'novel': [category_name(*cs) for cs in novel_sorted],
        'base_ids': [category_id(*cs) for cs in base],
        'novel_ids': [category_id(*cs) for cs in novel_sorted],
    }


def build_tokenizer(words: Iterable[str]) -> Any:
    """A word-level ``tokenizers.Tokenizer``: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3, then
    ``words`` in order; lower-casing normalizer, whitespace then punctuation pre-tokenizer, and a
    ``<bos> $A <eos>`` post-processor (``encode(..., add_special_tokens=False)`` skips it)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ['<pad>', '<bos>', '<eos>', '<unk>']
    vocab = {tok: i for i, tok in enumerate(specials)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token='<unk>'))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior='isolated')]
    )
    tok.post_processor = processors.TemplateProcessing(
        single='<bos> $A <eos>', pair='<bos> $A <eos> $B <eos>', special_tokens=[('<bos>', 1), ('<eos>', 2)]
    )
    tok.decoder = decoders.WordPiece(prefix='##', cleanup=True)
    tok.add_special_tokens(specials)
    return tok
