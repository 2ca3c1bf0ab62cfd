"""Drawing detections: boxes, names and scores on an RGB image with mmdet's ``DetLocalVisualizer``."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from mmdet.structures import DetDataSample
from mmdet.visualization import DetLocalVisualizer
from mmengine.structures import InstanceData

if TYPE_CHECKING:
    from detection.apis.ov_det_inferencer import Detection

__all__ = ['DetectionDrawer', 'palette']


def palette(num: int) -> list[tuple[int, int, int]]:
    """``num`` well-separated RGB colours (golden-ratio hue steps)."""
    colours = []
    for index in range(num):
        r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.85, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


class DetectionDrawer:
    """Draws :class:`~detection.apis.ov_det_inferencer.Detection` s; each name of the vocabulary keeps its
    colour (names outside it are added as they come)."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.visualizer = DetLocalVisualizer(name='vl_toolkit_detections', alpha=0.9)
        self.names: list[str] = []
        self.set_names(names)

    def set_names(self, names: Sequence[str]) -> None:
        """The names (and so the colours) of the labels drawn from now on."""
        self.names = list(dict.fromkeys(names))
        self._update()

    def _update(self) -> None:
        self.index = {name: i for i, name in enumerate(self.names)}
        self.visualizer.dataset_meta = dict(classes=tuple(self.names), palette=palette(len(self.names)))

    def __call__(self, image_rgb: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
        """``image_rgb`` (H, W, 3) uint8 with the boxes drawn, the best on top: a new RGB array."""
        if new := [d.name for d in detections if d.name not in self.index]:
            self.names.extend(dict.fromkeys(new))
            self._update()
        ordered = sorted(detections, key=lambda d: d.score)  # lowest score first: the best label on top
        bboxes = torch.tensor([d.bbox for d in ordered], dtype=torch.float32).reshape(-1, 4)
        # Edges on the far border (x = width) are outside mmengine's [0, width) check: pull them in a hair.
        height, width = image_rgb.shape[:2]
        bboxes[:, 0::2] = bboxes[:, 0::2].clamp(0, width - 1e-2)
        bboxes[:, 1::2] = bboxes[:, 1::2].clamp(0, height - 1e-2)
        instances = InstanceData()
        instances.bboxes = bboxes
        instances.scores = torch.tensor([d.score for d in ordered], dtype=torch.float32)
        instances.labels = torch.tensor([self.index[d.name] for d in ordered], dtype=torch.long)
        self.visualizer.line_width = max(1, round(min(image_rgb.shape[:2]) / 200))
        sample = DetDataSample(pred_instances=instances)
        self.visualizer.add_datasample('ovd', image_rgb, sample, draw_gt=False, pred_score_thr=-1.0)
        return self.visualizer.get_image()
