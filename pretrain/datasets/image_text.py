"""Image-caption data in the COCO captions format (COCO Captions, Shapes World).

One record per image holding all of its captions: training samples one caption per
visit (``SampleCaption``), so one image never appears twice in a contrastive batch;
evaluation keeps every caption as a reference (``gt_captions``).
"""

from __future__ import annotations

import csv
import os.path as osp
from collections import defaultdict
from typing import Any

from mmengine.dataset import BaseDataset

from toolkit.registry import DATASETS
from toolkit.schema.annotations import check_coco_captions
from toolkit.schema.files import check_files_exist, load_checked_json

__all__ = ['ImageCaptionDataset', 'ImageTextCsvDataset']


def _resolve_inside(root: str, file_name: str, ann_file: str) -> str:
    """Join ``file_name`` under ``root``, refusing absolute paths and ``..`` escapes."""
    if osp.isabs(file_name) or '..' in file_name.replace('\\', '/').split('/'):
        raise ValueError(f'{ann_file}: file_name {file_name!r} escapes the data root {root!r}')
    return osp.join(root, file_name)


@DATASETS.register_module()
class ImageCaptionDataset(BaseDataset):
    """Images with several captions each, read from a COCO captions JSON.

    Args:
        ann_file: COCO captions JSON (``images`` and ``annotations`` with ``image_id`` and
            ``caption``), relative to ``data_root``.
        data_root: Root of the data set copy; ``--cfg-options ...dataset.data_root=DIR``
            retargets a config.
        data_prefix: ``dict(img_path=...)``, the image folder relative to ``data_root``.
        check_files: Check at build time that every image exists (a pre-flight scan, so a
            missing file fails now, naming the file, not in the middle of an epoch). Turn it off for
            remote storage.
        on_missing: ``'raise'`` (a missing image fails the build) or ``'skip'`` (its record is
            dropped and counted in the skip ledger, :mod:`toolkit.skips`).
        schema_options: Options of the annotation file's check,
            :func:`toolkit.schema.annotations.check_coco_captions` (``max_caption_chars``).
        **kwargs: Passed to ``mmengine.dataset.BaseDataset`` (``pipeline``, ``test_mode``,
            ``indices``, ``serialize_data``, ...).
    """

    METAINFO: dict[str, Any] = dict(dataset_type='image_caption')

    def __init__(self, *, ann_file: str, data_root: str = '', data_prefix: dict[str, str] | None = None,
                 check_files: bool = True, on_missing: str = 'raise',
                 schema_options: dict[str, Any] | None = None, **kwargs: Any) -> None:  # fmt: skip
        self.check_files, self.on_missing = check_files, on_missing
        self.schema_options = dict(schema_options or {})
        super().__init__(
            ann_file=ann_file, data_root=data_root, data_prefix=data_prefix or dict(img_path=''), **kwargs
        )

    def load_data_list(self) -> list[dict[str, Any]]:
        # The schema check names the record and key of any malformed entry (types, unknown image ids,
        # empty or huge captions, file names escaping the root), so the loop below can trust the file.
        ann = load_checked_json(self.ann_file, check_coco_captions, **self.schema_options)
        captions: dict[int, list[str]] = defaultdict(list)
        for record in ann['annotations']:
            captions[record['image_id']].append(record['caption'].strip())

        img_root = self.data_prefix.get('img_path', '')
        data_list = []
        for image in ann['images']:
            if not captions.get(image['id']):
                continue  # an image without captions has nothing to learn or evaluate
            img_path = osp.join(img_root, image['file_name'])
            data_list.append(dict(img_path=img_path, img_id=image['id'], captions=captions[image['id']]))
        if not data_list:
            raise ValueError(f'{self.ann_file}: no image with captions')
        if self.check_files:
            data_list = check_files_exist(data_list, ann_file=self.ann_file, on_missing=self.on_missing)
        return data_list

    def __repr__(self) -> str:
        return f'{type(self).__name__}(ann_file={self.ann_file!r}, images={len(self)})'


@DATASETS.register_module()
class ImageTextCsvDataset(BaseDataset):
    """Web-scale image-text pairs (CC3M, CC12M) listed in a CSV/TSV file, as open_clip reads them.

    Each row names an image (``img_key`` column, relative to ``data_prefix['img_path']``) and
    its caption (``caption_key``). Rows naming the same image are merged into one record
    with several captions.

    Args:
        ann_file: The CSV/TSV file, relative to ``data_root``.
        img_key: Column of image paths (open_clip: ``filepath``).
        caption_key: Column of captions (open_clip: ``title``).
        sep: Column separator (tab for open_clip's CC3M files).
        check_files: Pre-flight check that every image exists (off for remote storage).
        on_missing: ``'raise'`` or ``'skip'`` a row whose image is missing (counted, :mod:`toolkit.skips`).
    """

    METAINFO: dict[str, Any] = dict(dataset_type='image_text_csv')

    def __init__(self, *, ann_file: str, data_root: str = '', data_prefix: dict[str, str] | None = None,
                 img_key: str = 'filepath', caption_key: str = 'title', sep: str = '\t',
                 check_files: bool = True, on_missing: str = 'raise', **kwargs: Any) -> None:  # fmt: skip
        self.img_key, self.caption_key, self.sep, self.check_files = img_key, caption_key, sep, check_files
        self.on_missing = on_missing
        super().__init__(
            ann_file=ann_file, data_root=data_root, data_prefix=data_prefix or dict(img_path=''), **kwargs
        )

    def load_data_list(self) -> list[dict[str, Any]]:
        if not osp.isfile(self.ann_file):
            raise FileNotFoundError(f'annotation file {self.ann_file} does not exist')
        captions: dict[str, list[str]] = defaultdict(list)
        with open(self.ann_file, newline='') as f:
            reader = csv.DictReader(f, delimiter=self.sep)
            missing = {self.img_key, self.caption_key} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(
                    f'{self.ann_file}: missing column(s) {sorted(missing)}; found {reader.fieldnames}'
                )
            for line, row in enumerate(reader, start=2):
                caption = (row[self.caption_key] or '').strip()
                if not row[self.img_key] or not caption:
                    raise ValueError(
                        f'{self.ann_file}:{line}: empty {self.img_key!r} or {self.caption_key!r}'
                    )
                captions[row[self.img_key]].append(caption)
        img_root = self.data_prefix.get('img_path', '')
        data_list = []
        for img_id, (file_name, texts) in enumerate(captions.items()):
            img_path = _resolve_inside(img_root, file_name, self.ann_file)
            data_list.append(dict(img_path=img_path, img_id=img_id, captions=texts))
        if not data_list:
            raise ValueError(f'{self.ann_file}: no rows')
        if self.check_files:
            data_list = check_files_exist(data_list, ann_file=self.ann_file, on_missing=self.on_missing)
        return data_list
