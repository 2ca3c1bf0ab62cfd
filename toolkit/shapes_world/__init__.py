"""Shapes World: the embedded synthetic data set of VL-Toolkit, written in the real COCO, LVIS and MSRVTT
formats so that the same pipelines serve real and synthetic data.

Layout written by :func:`generate_shapes_world` (``tools/data/make_shapes_world.py`` is its CLI)::

    DIR/images/{train,val,test}/000000000001.jpg ...
    DIR/annotations/captions_{train,val,test}.json        COCO captions, 5 per image
    DIR/annotations/instances_{train,val,test}.json       COCO instances (bbox, polygon, area, iscrowd)
    DIR/annotations/instances_train_base.json             OV-COCO: novel annotations removed
    DIR/annotations/ov_split.json                         base/novel names and ids
    DIR/annotations/lvis_v1_{train,val}.json              LVIS v1 (frequency r/c/f from training counts)
    DIR/videos/video0.mp4 ...                             H.264 yuv420p
    DIR/msrvtt/{train_val,test}_videodatainfo.json        MSRVTT captions
    DIR/msrvtt/{train,val,test}_qa.json                   MSRVTT-QA
    DIR/tokenizer.json                                    word-level ``tokenizers`` vocabulary
    DIR/.complete                                         written last: {seed, size, version}

Importing this package has no side effects (nothing registered, nothing written).
"""

from toolkit.shapes_world.captions import ACTIONS, image_captions, video_captions, video_questions, vocabulary
from toolkit.shapes_world.formats import lvis_frequency, ov_split
from toolkit.shapes_world.generate import (
    SIZES,
    VERSION,
    category_weights,
    generate_shapes_world,
    render_samples,
)
from toolkit.shapes_world.scene import (
    BACKGROUNDS,
    CATEGORIES,
    COLOUR_RGB,
    COLOURS,
    NOVEL_CATEGORIES,
    SHAPES,
    ShapeInstance,
    category_id,
    category_name,
)

__all__ = [
    'ACTIONS',
    'BACKGROUNDS',
    'CATEGORIES',
    'COLOURS',
    'COLOUR_RGB',
    'NOVEL_CATEGORIES',
    'SHAPES',
    'SIZES',
    'VERSION',
    'ShapeInstance',
    'category_id',
    'category_name',
    'category_weights',
    'generate_shapes_world',
    'image_captions',
    'lvis_frequency',
    'ov_split',
    'render_samples',
    'video_captions',
    'video_questions',
    'vocabulary',
]
