# MaMMUT ViT-B/16 + 12-layer decoder on COCO Captions at 224 px.
_base_ = [
    '../_base_/models/mammut_vit-b16-dec12.py',
    '../_base_/datasets/coco_caption.py',
    '../_base_/schedules/adamw_cosine_20e.py',
    '../_base_/default_runtime.py',
]
