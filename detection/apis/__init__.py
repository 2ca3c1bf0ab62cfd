"""Open-vocabulary detection as a library call: :class:`OVDetInferencer`."""

from detection.apis.ov_det_inferencer import (
    Detection,
    DetectionInputError,
    DetectionResult,
    OVDetInferencer,
    coco_results,
    parse_names,
)
from detection.apis.visualization import DetectionDrawer

__all__ = [
    'Detection',
    'DetectionDrawer',
    'DetectionInputError',
    'DetectionResult',
    'OVDetInferencer',
    'coco_results',
    'parse_names',
]
