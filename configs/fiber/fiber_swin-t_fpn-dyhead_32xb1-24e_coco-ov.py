# FIBER-T on open-vocabulary COCO: the FIBER-B recipe with Swin-T (window 7, drop path 0.2, the preset's).
_base_ = ['./fiber_swin-b_fpn-dyhead_32xb1-24e_coco-ov.py']
model = dict(
    backbone=dict(preset='fiber-t', image=dict(drop_path_rate=0.2)),
    neck=dict(in_channels=[192, 384, 768]),  # Swin-T C3-C5 widths
)
