"""COCO box AP overall and on the base and novel categories of an open-vocabulary split.

OV-COCO (Zareian et al., OVR-CNN, CVPR 2021, Sec. 4.1; followed by ViLD, Detic, FIBER's OV tables) reports
AP50 on the novel categories (the headline), on the base ones and on all. The group numbers here are those of
pycocotools' ``COCOeval`` run on the group's categories alone: COCOeval evaluates and accumulates every
category independently, so the group's slice of the all-category ``precision`` array (IoU x recall x category
x area x max-dets) averaged over its valid entries (``> -1``) is exactly that run's ``stats[0]`` (AP) and
``stats[1]`` (AP50) when the same max-dets is used.

mmdet 3.3 has an ``OVCocoMetric`` too (a copy of ``CocoMetric.compute_metrics`` with base/novel slices: it
indexes categories in the data set's order and takes IoU index 0 as AP50). This one leaves mmdet's
``CocoMetric`` evaluation as it is, takes an explicit split as well, maps categories through COCOeval's own
order and finds IoU 0.5 among the thresholds; it has its own name so as not to shadow mmdet's (the tests check
that both agree).

What is added to mmdet's ``CocoMetric``: ``bbox_mAP_base``, ``bbox_mAP_50_base``, ``bbox_mAP_novel``,
``bbox_mAP_50_novel`` (and the number of categories of each group found in the evaluation). Max-dets is the
last of ``proposal_nums`` (mmdet's ``bbox_mAP`` uses the same: 1000 by default, so as many as the model
keeps, ``max_per_img``). The split comes from ``ov_split`` or, by default, from the data set's ``metainfo``
(``base_classes``/``novel_classes`` of :class:`~detection.datasets.ov_detection.OVCocoDataset`).

LVIS (Gupta et al., CVPR 2019) groups its categories by training frequency, and OV-LVIS (ViLD) takes the rare
group as novel: mmdet's ``LVISMetric`` reports AP, AP_r, AP_c and AP_f. :class:`OpenVocabLVISMetric` is that
metric runnable with NumPy >= 1.24: ``lvis`` 0.5.3 (the last release) still calls ``np.float`` in
``LVISEval.accumulate``, so the alias is provided while the evaluation runs and removed afterwards.
"""

from __future__ import annotations

import contextlib
import os.path as osp
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from mmdet.datasets.api_wrappers import COCOeval
from mmdet.evaluation.metrics import CocoMetric, LVISMetric
from mmengine.fileio import load
from mmengine.logging import MMLogger

from detection.vocabulary import read_ov_split
from toolkit.registry import METRICS

__all__ = ['OpenVocabCocoMetric', 'OpenVocabLVISMetric', 'group_ap']


def group_ap(coco_eval: Any, cat_ids: Sequence[int], iou: float | None = None) -> float:
    """AP of the categories ``cat_ids`` from an accumulated ``COCOeval`` (area 'all', the last max-dets),
    averaged as pycocotools' ``summarize`` does; ``iou`` picks one IoU threshold (AP50: 0.5). -1 when no
    category of the group has ground truth."""
    params = coco_eval.params
    position = {cat_id: k for k, cat_id in enumerate(params.catIds)}
    ks = sorted(position[c] for c in cat_ids if c in position)
    precision = coco_eval.eval['precision'][:, :, ks, 0, -1]  # (T, R, K)
    if iou is not None:
        matches = np.where(np.isclose(np.asarray(params.iouThrs), iou))[0]
        if matches.size == 0:
            raise ValueError(f'IoU {iou} is not among the evaluated thresholds {list(params.iouThrs)}')
        precision = precision[matches]
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else -1.0


@METRICS.register_module()
class OpenVocabCocoMetric(CocoMetric):
    """mmdet's ``CocoMetric`` plus box AP and AP50 on the base and novel categories.

    Args:
        ov_split: ``None`` (the data set's ``base_classes``/``novel_classes``), a JSON file or a dict with
            ``base`` and ``novel`` category names.
        **kwargs: ``CocoMetric`` arguments (``ann_file``, ``metric`` ('bbox' for the groups),
            ``classwise``, ``proposal_nums``, ``outfile_prefix``, ...).
    """

    def __init__(self, *, ov_split: str | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ov_split = read_ov_split(ov_split) if ov_split is not None else None

    def _split(self) -> dict[str, tuple[str, ...]]:
        if self.ov_split is not None:
            return self.ov_split
        meta = self.dataset_meta or {}
        if 'base_classes' not in meta or 'novel_classes' not in meta:
            raise ValueError(
                'OpenVocabCocoMetric: no open-vocabulary split: pass ov_split=... or evaluate an '
                'OVCocoDataset built with ov_split'
            )
        return {'base': tuple(meta['base_classes']), 'novel': tuple(meta['novel_classes'])}

    def compute_metrics(self, results: list[Any]) -> dict[str, float]:
        own_dir = tempfile.TemporaryDirectory() if self.outfile_prefix is None else None
        given_prefix = self.outfile_prefix
        prefix = osp.join(own_dir.name, 'results') if own_dir is not None else given_prefix
        self.outfile_prefix = prefix  # keep the detections json for the group evaluation
        try:
            metrics = dict(super().compute_metrics(results))
            if 'bbox' in self.metrics and not self.format_only:
                metrics.update(self._group_metrics(f'{prefix}.bbox.json'))
        finally:
            self.outfile_prefix = given_prefix
            if own_dir is not None:
                own_dir.cleanup()
        return metrics

    def _group_metrics(self, detections_file: str) -> dict[str, float]:
        logger = MMLogger.get_current_instance()
        split = self._split()
        detections = load(detections_file)
        groups = {
            name: [c for c in self._coco_api.get_cat_ids(cat_names=list(split[name])) if c in self.cat_ids]
            for name in ('base', 'novel')
        }
        metrics: dict[str, float] = {f'num_{name}': len(ids) for name, ids in groups.items()}
        if not detections:  # mmdet logs the empty result and reports nothing: every AP is 0
            items = self.metric_items or ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')
            metrics.update({f'bbox_{item}': 0.0 for item in items})
            metrics.update({f'bbox_mAP{k}_{name}': 0.0 for name in groups for k in ('', '_50')})
            return metrics
        coco_eval = COCOeval(self._coco_api, self._coco_api.loadRes(detections), 'bbox')
        coco_eval.params.catIds = self.cat_ids
        coco_eval.params.imgIds = self.img_ids
        coco_eval.params.maxDets = list(self.proposal_nums)
        coco_eval.params.iouThrs = self.iou_thrs
        coco_eval.evaluate()
        coco_eval.accumulate()
        for name, ids in groups.items():
            metrics[f'bbox_mAP_{name}'] = group_ap(coco_eval, ids)
            metrics[f'bbox_mAP_50_{name}'] = group_ap(coco_eval, ids, iou=0.5)
        base, novel = groups['base'], groups['novel']
        logger.info(
            f'open-vocabulary box AP / AP50: base {metrics["bbox_mAP_base"]:.3f} / '
            f'{metrics["bbox_mAP_50_base"]:.3f} ({len(base)} categories), '
            f'novel {metrics["bbox_mAP_novel"]:.3f} / {metrics["bbox_mAP_50_novel"]:.3f} ({len(novel)})'
        )
        return metrics


@contextlib.contextmanager
def _numpy_float_alias() -> Iterator[None]:
    """``np.float`` (= ``float``) for the duration of the block when this NumPy has removed it."""
    added = 'float' not in np.__dict__
    if added:
        np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if added:
            del np.float  # type: ignore[attr-defined]


@METRICS.register_module()
class OpenVocabLVISMetric(LVISMetric):
    """mmdet's ``LVISMetric`` (box AP, AP_r = novel of OV-LVIS, AP_c, AP_f) with NumPy >= 1.24.

    Args:
        **kwargs: ``LVISMetric`` arguments (``ann_file``, ``metric``, ``classwise``, ...).
    """

    def compute_metrics(self, results: list[Any]) -> dict[str, float]:
        with _numpy_float_alias():
            return dict(super().compute_metrics(results))
