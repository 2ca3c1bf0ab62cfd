"""COCO and LVIS detection data with a prompt vocabulary per image and an open-vocabulary category split.

Open-vocabulary detection trains on base categories and tests on base and novel ones: OV-COCO (Zareian et
al., OVR-CNN, CVPR 2021, Sec. 4.1: 48 base / 17 novel COCO categories, novel boxes removed from training) and
OV-LVIS (Gu et al., ViLD, ICLR 2022: frequent + common base, rare novel). FIBER (Dou et al., NeurIPS 2022,
Sec. 4.2) and GLIP feed the category names as the text prompt; mmdet's GLIP data sets put them in ``text``
with ``custom_entities=True`` (``return_classes``).

Both classes extend mmdet's (``CocoDataset`` / ``LVISV1Dataset``):

* the category list (``metainfo['classes']``, in category-id order) is read from the annotation file, so one
  class serves COCO, LVIS and Shapes World files; ``metainfo=dict(classes=...)`` still restricts it;
* ``ov_split`` (a JSON file relative to ``data_root``, or a dict, with ``base`` and ``novel`` name lists; an
  LVIS annotation file gives the frequency split: frequent + common base, rare novel) and
  ``vocabulary`` (``'all'``, ``'base'``, ``'novel'`` or ``'base+novel'``) pick the categories: annotations of
  other categories are dropped (their images kept, as in the OV-COCO training file) and only the vocabulary
  is named in the prompt, so a ``'base'`` training set never shows a novel name;
* ``drop_images_outside_vocabulary=True`` removes every image that shows a category outside the vocabulary
  instead (the zero-shot detection protocol, Bansal et al., ECCV 2018, Sec. 4): with the full training file
  and ``vocabulary='base'`` the novel objects are then never seen as background. The removed images are
  counted in the log;
* each sample gets ``text`` (the vocabulary) and ``custom_entities=True`` when it is fetched, not in the
  stored records (LVIS's 1,203 names would otherwise be serialised once per image);
* ``metainfo`` carries ``base_classes`` / ``novel_classes`` for
  :class:`~detection.evaluation.ov_metric.OpenVocabCocoMetric`;
* the annotation file is schema-checked (:mod:`toolkit.schema`) before the COCO/LVIS api indexes it, and
  every image is checked to exist when the data set is built (``check_files``, ``on_missing``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any

from mmdet.datasets import CocoDataset, LVISV1Dataset
from mmengine.logging import print_log

from detection.vocabulary import read_ov_split
from toolkit.registry import DATASETS
from toolkit.schema.annotations import check_coco_instances, check_lvis
from toolkit.schema.files import check_files_exist, load_checked_json

__all__ = ['VOCABULARIES', 'OVCocoDataset', 'OVLVISDataset']

VOCABULARIES = ('all', 'base', 'novel', 'base+novel')
_LVIS_URL = 'http://images.cocodataset.org/'


class _OVVocabulary:
    """What both data sets share (a mixin before the mmdet class): the arguments, vocabulary selection,
    record loading through a COCO/LVIS api and ``text`` on fetch.

    Args:
        ov_split: ``None``, a JSON file (relative to ``data_root``) or a dict with ``base``/``novel`` names.
        vocabulary: ``'all'`` categories of the file, ``'base'``, ``'novel'`` or ``'base+novel'``.
        return_classes: add ``text`` (the vocabulary) and ``custom_entities`` to every sample.
        drop_images_outside_vocabulary: remove the images with a box of a category outside the vocabulary
            (default: keep them, without those boxes, as OV-COCO's training file does).
        check_files: pre-flight scan that every image exists (turn off for remote storage).
        on_missing: ``'raise'`` (a missing image fails the build) or ``'skip'`` (dropped, counted in the
            skip ledger, :mod:`toolkit.skips`).
        schema_options: options of the annotation file's check
            (:func:`toolkit.schema.annotations.check_coco_instances` or
            :func:`~toolkit.schema.annotations.check_lvis`: ``bbox_tolerance``, ``allow_empty_boxes``).
        **kwargs: the mmdet data set's arguments (``data_root``, ``ann_file``, ``data_prefix``, ...).
    """

    ann_file: str
    data_root: str
    _metainfo: dict[str, Any]
    ANN_ID_UNIQUE: bool
    parse_data_info: Callable[[dict[str, Any]], Any]

    def __init__(
        self,
        *,
        ov_split: str | Mapping[str, Any] | None = None,
        vocabulary: str = 'all',
        return_classes: bool = True,
        drop_images_outside_vocabulary: bool = False,
        check_files: bool = True,
        on_missing: str = 'raise',
        schema_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if vocabulary not in VOCABULARIES:
            raise ValueError(f'vocabulary must be one of {VOCABULARIES}, got {vocabulary!r}')
        if vocabulary != 'all' and ov_split is None:
            raise ValueError(f'vocabulary={vocabulary!r} needs an ov_split (base/novel names)')
        self._ov_split_arg = ov_split
        self._vocabulary_kind = vocabulary
        self._with_text = return_classes
        self._drop_outside = bool(drop_images_outside_vocabulary)
        self._check_files, self._on_missing = check_files, on_missing
        self._schema_options = dict(schema_options or {})
        self._given_classes = tuple((kwargs.get('metainfo') or {}).get('classes') or ())
        super().__init__(return_classes=False, **kwargs)  # type: ignore[call-arg]  # the mmdet data set

    def _select(self, categories: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The vocabulary's categories, in id order, after checking the split against the file."""
        split = read_ov_split(self._ov_split_arg, self.data_root)
        by_name = {c['name']: c for c in categories}
        wanted: set[str] | None = None
        if split is not None:
            missing = sorted(set(split['base'] + split['novel']) - set(by_name))
            if missing:
                raise ValueError(f'{self.ann_file}: ov_split names not among its categories: {missing[:10]}')
            kind = self._vocabulary_kind
            if kind != 'all':
                wanted = set(
                    split['base']
                    if kind == 'base'
                    else split['novel']
                    if kind == 'novel'
                    else split['base'] + split['novel']
                )
            self._metainfo['base_classes'] = split['base']
            self._metainfo['novel_classes'] = split['novel']
        if self._given_classes:
            unknown = sorted(set(self._given_classes) - set(by_name))
            if unknown:
                raise ValueError(
                    f'{self.ann_file}: metainfo classes not among its categories: {unknown[:10]}'
                )
            wanted = set(self._given_classes) if wanted is None else wanted & set(self._given_classes)
        chosen = sorted(
            (c for c in categories if wanted is None or c['name'] in wanted), key=lambda c: c['id']
        )
        if not chosen:
            raise ValueError(f'{self.ann_file}: the vocabulary {self._vocabulary_kind!r} selects no category')
        return chosen

    def _load_records(self, api: Any, file_name: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
        chosen = self._select(list(api.load_cats(api.get_cat_ids())))
        self._metainfo['classes'] = tuple(c['name'] for c in chosen)
        self.cat_ids = [c['id'] for c in chosen]
        self.cat2label = {cat_id: label for label, cat_id in enumerate(self.cat_ids)}
        self.cat_img_map = copy.deepcopy(api.cat_img_map)
        records, ann_ids, dropped = [], [], 0
        for img_id in api.get_img_ids():
            raw_img_info = dict(api.load_imgs([img_id])[0])
            raw_img_info['img_id'] = img_id
            raw_img_info['file_name'] = file_name(raw_img_info)
            ids = api.get_ann_ids(img_ids=[img_id])
            anns = api.load_anns(ids)
            if self._drop_outside and any(ann['category_id'] not in self.cat2label for ann in anns):
                dropped += 1
                continue
            ann_ids.extend(ids)
            records.append(self.parse_data_info({'raw_ann_info': anns, 'raw_img_info': raw_img_info}))
        if self.ANN_ID_UNIQUE and len(set(ann_ids)) != len(ann_ids):
            raise ValueError(f'{self.ann_file}: annotation ids are not unique')
        if dropped:
            print_log(
                f'{self.ann_file}: dropped {dropped} of {dropped + len(records)} images that show categories '
                f'outside the {self._vocabulary_kind!r} vocabulary (drop_images_outside_vocabulary=True)',
                logger='current',
            )
        if self._check_files:
            records = check_files_exist(records, ann_file=self.ann_file, on_missing=self._on_missing)
        return records

    def get_data_info(self, idx: int) -> dict[str, Any]:
        data_info: dict[str, Any] = super().get_data_info(idx)  # type: ignore[misc]
        if self._with_text:
            data_info['text'] = self._metainfo['classes']
            data_info['custom_entities'] = True
        return data_info


@DATASETS.register_module()
class OVCocoDataset(_OVVocabulary, CocoDataset):
    """COCO-format detection with a prompt vocabulary (see the module docstring).

    Args: ``ov_split``, ``vocabulary``, ``return_classes`` (see ``_OVVocabulary``) and ``CocoDataset``'s.
    """

    def load_data_list(self) -> list[dict[str, Any]]:
        # Parsed once, checked, then indexed: COCOAPI(path) would parse the file again.
        ann = load_checked_json(
            self.ann_file, check_coco_instances, backend_args=self.backend_args, **self._schema_options
        )
        coco = self.COCOAPI()
        coco.dataset = ann
        coco.createIndex()
        coco.img_ann_map, coco.cat_img_map = coco.imgToAnns, coco.catToImgs  # mmdet's aliases (its __init__)
        return self._load_records(coco, lambda info: info['file_name'])


@DATASETS.register_module()
class OVLVISDataset(_OVVocabulary, LVISV1Dataset):
    """LVIS v1 detection with a prompt vocabulary (see the module docstring); images come from ``coco_url``
    (``<split>/<file>`` under ``data_prefix['img']``), as mmdet's ``LVISV1Dataset``.

    Args: ``ov_split``, ``vocabulary``, ``return_classes`` (see ``_OVVocabulary``) and ``LVISV1Dataset``'s.
    """

    def load_data_list(self) -> list[dict[str, Any]]:
        from lvis import LVIS

        ann = load_checked_json(
            self.ann_file,
            check_lvis,
            url_prefix=_LVIS_URL,
            backend_args=self.backend_args,
            **self._schema_options,
        )
        lvis = LVIS.__new__(LVIS)  # LVIS(path) would parse the (checked) file a second time
        lvis.logger, lvis.dataset = logging.getLogger(LVIS.__module__), ann
        lvis._create_index()
        return self._load_records(lvis, lambda info: info['coco_url'].replace(_LVIS_URL, ''))
