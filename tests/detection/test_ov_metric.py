"""OpenVocabCocoMetric: base/novel AP and AP50 equal pycocotools' COCOeval run on each category subset (and
mmdet's OVCocoMetric); LVIS AP_r/AP_c/AP_f through mmdet's LVISMetric on the Shapes World LVIS files; the
data sets' vocabularies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mmdet.evaluation.metrics import OVCocoMetric
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from toolkit.registry import DATASETS, METRICS


def _test_set(root: Path, **kwargs: object):
    """The Shapes World test split as an OVCocoDataset without a pipeline (records only)."""
    cfg = dict(type='OVCocoDataset', data_root=f'{root}/', ann_file='annotations/instances_test.json',
               data_prefix=dict(img='images/test/'), test_mode=True, pipeline=[])  # fmt: skip
    return DATASETS.build(dict(cfg, **kwargs))


def _noisy_detections(gt: dict, seed: int) -> list[dict]:
    """Per image: each box jittered (some badly), a few relabelled, plus random false positives."""
    rng = np.random.default_rng(seed)
    cat_ids = [c['id'] for c in gt['categories']]
    by_image: dict[int, list[dict]] = {img['id']: [] for img in gt['images']}
    for ann in gt['annotations']:
        x, y, w, h = ann['bbox']
        noise = rng.normal(0, 0.04 if rng.random() < 0.7 else 0.3, 4) * [w, h, w, h]
        label = ann['category_id'] if rng.random() < 0.8 else int(rng.choice(cat_ids))
        by_image[ann['image_id']].append(
            dict(bbox=[x, y, w, h] + noise, label=label, score=rng.uniform(0.3, 1))
        )
    for dets in by_image.values():
        for _ in range(int(rng.integers(0, 6))):
            x, y = rng.uniform(0, 100, 2)
            w, h = rng.uniform(10, 40, 2)
            dets.append(dict(bbox=[x, y, w, h], label=int(rng.choice(cat_ids)), score=rng.uniform(0, 0.6)))
    return [dict(image_id=i, **d) for i, dets in by_image.items() for d in dets]


def _run_metric(metric, dataset, detections: list[dict]) -> dict:
    metric.dataset_meta = dataset.metainfo
    label_of = {cat_id: label for label, cat_id in enumerate(dataset.cat_ids)}
    samples = []
    for info in (dataset.get_data_info(i) for i in range(len(dataset))):
        dets = [d for d in detections if d['image_id'] == info['img_id'] and d['label'] in label_of]
        boxes = torch.tensor([d['bbox'] for d in dets], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        pred = dict(
            bboxes=boxes,
            scores=torch.tensor([d['score'] for d in dets], dtype=torch.float32),
            labels=torch.tensor([label_of[d['label']] for d in dets], dtype=torch.long),
        )
        samples.append(
            dict(img_id=info['img_id'], ori_shape=(info['height'], info['width']), pred_instances=pred)
        )
    metric.process({}, samples)
    return metric.evaluate(len(samples))


def _pycocotools(gt_file: Path, detections: list[dict], cat_ids: list[int]) -> np.ndarray:
    gt = COCO(str(gt_file))
    dt = gt.loadRes([dict(image_id=d['image_id'], category_id=d['label'], bbox=[float(v) for v in d['bbox']],
                          score=float(d['score'])) for d in detections])  # fmt: skip
    ev = COCOeval(gt, dt, 'bbox')
    ev.params.catIds = cat_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def test_ov_metric_equals_pycocotools_on_category_subsets(shapes_tiny: Path) -> None:
    ann_file = shapes_tiny / 'annotations/instances_test.json'
    split = json.loads((shapes_tiny / 'annotations/ov_split.json').read_text())
    dataset = _test_set(shapes_tiny, ov_split='annotations/ov_split.json')
    detections = _noisy_detections(json.loads(ann_file.read_text()), seed=0)
    metric = METRICS.build(dict(type='OpenVocabCocoMetric', ann_file=str(ann_file)))
    results = _run_metric(metric, dataset, detections)

    overall = _pycocotools(ann_file, detections, sorted(split['base_ids'] + split['novel_ids']))
    base = _pycocotools(ann_file, detections, split['base_ids'])
    novel = _pycocotools(ann_file, detections, split['novel_ids'])
    assert results['coco/bbox_mAP'] == pytest.approx(overall[0], abs=5e-4)  # mmdet rounds to 3 decimals
    assert results['coco/bbox_mAP_base'] == pytest.approx(base[0], abs=1e-12)
    assert results['coco/bbox_mAP_50_base'] == pytest.approx(base[1], abs=1e-12)
    assert results['coco/bbox_mAP_novel'] == pytest.approx(novel[0], abs=1e-12)
    assert results['coco/bbox_mAP_50_novel'] == pytest.approx(novel[1], abs=1e-12)
    assert 0.05 < novel[0] < 0.95 and abs(base[0] - novel[0]) > 1e-3  # the groups are really different
    assert (results['coco/num_base'], results['coco/num_novel']) == (
        len(split['base_ids']),
        len(split['novel_ids']),
    )
    # mmdet's own OVCocoMetric (base/novel slices of its CocoMetric copy) agrees.
    theirs = _run_metric(OVCocoMetric(ann_file=str(ann_file)), dataset, detections)
    pairs = (('base', 'base_ap'), ('50_base', 'base_ap50'), ('novel', 'novel_ap'), ('50_novel', 'novel_ap50'))
    for ours, key in pairs:
        assert results[f'coco/bbox_mAP_{ours}'] == pytest.approx(theirs[f'coco/{key}'], abs=1e-12)

    # An explicit split (a dict) gives the same numbers; a split with two novel categories only changes novel.
    metric = METRICS.build(dict(type='OpenVocabCocoMetric', ann_file=str(ann_file), ov_split=split))
    assert _run_metric(metric, dataset, detections)['coco/bbox_mAP_novel'] == results['coco/bbox_mAP_novel']
    two = dict(base=split['base'], novel=split['novel'][:2])
    metric = METRICS.build(dict(type='OpenVocabCocoMetric', ann_file=str(ann_file), ov_split=two))
    narrowed = _run_metric(metric, dataset, detections)
    assert narrowed['coco/bbox_mAP_novel'] == pytest.approx(
        _pycocotools(ann_file, detections, split['novel_ids'][:2])[0], abs=1e-12
    )


def test_ov_metric_without_a_split_says_so(shapes_tiny: Path) -> None:
    ann_file = shapes_tiny / 'annotations/instances_test.json'
    dataset = _test_set(shapes_tiny)
    metric = METRICS.build(dict(type='OpenVocabCocoMetric', ann_file=str(ann_file)))
    with pytest.raises(ValueError, match='ov_split'):
        _run_metric(metric, dataset, _noisy_detections(json.loads(ann_file.read_text()), seed=1))


def test_base_vocabulary_hides_novel_names_and_boxes(shapes_tiny: Path) -> None:
    split = json.loads((shapes_tiny / 'annotations/ov_split.json').read_text())
    common = dict(data_root=f'{shapes_tiny}/', data_prefix=dict(img='images/train/'), pipeline=[])
    train = dict(type='OVCocoDataset', ann_file='annotations/instances_train.json', **common)
    base = DATASETS.build(dict(train, ov_split='annotations/ov_split.json', vocabulary='base'))
    assert base.metainfo['classes'] == tuple(split['base'])
    novel_labels = set()
    for i in range(len(base)):
        info = base.get_data_info(i)
        assert info['text'] == tuple(split['base']) and info['custom_entities']
        novel_labels |= {inst['bbox_label'] for inst in info['instances']} - set(range(len(split['base'])))
    assert not novel_labels
    everything = DATASETS.build(train)
    assert len(everything.metainfo['classes']) == 48 and everything.cat_ids == sorted(everything.cat_ids)
    both = DATASETS.build(dict(train, ov_split=split, vocabulary='base+novel'))
    assert set(both.metainfo['classes']) == set(split['base'] + split['novel'])
    with pytest.raises(ValueError, match='needs an ov_split'):
        DATASETS.build(dict(train, vocabulary='base'))
    with pytest.raises(ValueError, match='not among its categories'):
        DATASETS.build(dict(train, vocabulary='base', ov_split=dict(base=['red moon'], novel=[])))


def test_lvis_metric_reports_rare_common_frequent(shapes_tiny: Path) -> None:
    ann_file = shapes_tiny / 'annotations/lvis_v1_val.json'
    dataset = DATASETS.build(
        dict(
            type='OVLVISDataset',
            data_root=f'{shapes_tiny}/',
            ann_file='annotations/lvis_v1_val.json',
            data_prefix=dict(img='images/'),
            test_mode=True,
            pipeline=[],
        )  # fmt: skip
    )
    assert len(dataset.metainfo['classes']) == 48
    first = dataset.get_data_info(0)
    assert first['img_path'].endswith(f'images/val/{first["img_id"]:012d}.jpg') and len(first['text']) == 48
    gt = json.loads(ann_file.read_text())
    metric = METRICS.build(dict(type='OpenVocabLVISMetric', ann_file=str(ann_file)))
    perfect = [dict(image_id=a['image_id'], bbox=a['bbox'], label=a['category_id'], score=1.0)
               for a in gt['annotations']]  # fmt: skip
    results = _run_metric(metric, dataset, perfect)
    assert results['lvis/bbox_AP'] == pytest.approx(1.0, abs=1e-3)
    frequencies = {c['frequency'] for c in gt['categories'] if c['image_count'] > 0}
    for group in frequencies:
        assert results[f'lvis/bbox_AP{group}'] == pytest.approx(1.0, abs=1e-3)
    noisy = _run_metric(METRICS.build(dict(type='OpenVocabLVISMetric', ann_file=str(ann_file))), dataset,
                        _noisy_detections(gt, seed=2))  # fmt: skip
    assert 0.05 < noisy['lvis/bbox_AP'] < 0.95
    assert 'float' not in np.__dict__  # the NumPy alias is gone again


def test_ov_metric_without_detections_reports_zero(shapes_tiny: Path) -> None:
    ann_file = shapes_tiny / 'annotations/instances_test.json'
    dataset = _test_set(shapes_tiny, ov_split='annotations/ov_split.json')
    results = _run_metric(
        METRICS.build(dict(type='OpenVocabCocoMetric', ann_file=str(ann_file))), dataset, []
    )
    for key in ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_base', 'bbox_mAP_50_novel'):
        assert results[f'coco/{key}'] == 0.0


def test_zero_shot_protocol_drops_every_image_showing_a_novel_shape(shapes_tiny: Path) -> None:
    split = json.loads((shapes_tiny / 'annotations/ov_split.json').read_text())
    gt = json.loads((shapes_tiny / 'annotations/instances_train.json').read_text())
    novel_ids = {c['id'] for c in gt['categories'] if c['name'] in split['novel']}
    with_novel = {a['image_id'] for a in gt['annotations'] if a['category_id'] in novel_ids}
    assert 0 < len(with_novel) < len(gt['images'])  # the tiny set has both kinds of image
    common = dict(type='OVCocoDataset', data_root=f'{shapes_tiny}/', data_prefix=dict(img='images/train/'),
                  ann_file='annotations/instances_train.json', ov_split='annotations/ov_split.json',
                  vocabulary='base', pipeline=[], filter_cfg=None)  # fmt: skip
    kept = DATASETS.build(dict(common))
    assert len(kept) == len(gt['images'])  # OV-COCO: the images stay, their novel boxes go
    zsd = DATASETS.build(dict(common, drop_images_outside_vocabulary=True))
    ids = {zsd.get_data_info(i)['img_id'] for i in range(len(zsd))}
    assert ids == {img['id'] for img in gt['images']} - with_novel
    labels = [inst['bbox_label'] for i in range(len(zsd)) for inst in zsd.get_data_info(i)['instances']]
    assert len(labels) == sum(a['image_id'] in ids for a in gt['annotations'])  # every box of a kept image
    assert max(labels) < len(split['base'])
    # 'all' has no category outside the vocabulary: nothing is dropped
    everything = DATASETS.build(dict(common, vocabulary='all', drop_images_outside_vocabulary=True))
    assert len(everything) == len(kept)
