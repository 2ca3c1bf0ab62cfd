# FIBER-B on open-vocabulary COCO (48 base categories for training, base + novel AP/AP50 at test), at the
# paper's scale: 800 x 1333 test images, multi-scale training, 32 images a batch, 24 epochs (FIBER Sec. 4.2).
_base_ = [
    '../_base_/models/fiber_swin-b_fpn-dyhead.py',
    '../_base_/datasets/coco_ov_detection.py',
    '../_base_/schedules/fiber_adamw_step_24e.py',
    '../_base_/default_runtime.py',
]
custom_hooks = [  # a list replaces the runtime's: its two hooks and FIBER's MODEL_EMA 0.999
    dict(type='SafeCheckpointHook'),
    dict(type='LossCurveHook', interval=10),
    dict(type='EMAHook', ema_type='ExponentialMovingAverage', momentum=0.001),
]
default_hooks = dict(checkpoint=dict(save_best='coco/bbox_mAP_50_novel', rule='greater'))
load_from = None  # a FIBER fine-grained checkpoint, converted (pretrain/models/fiber_converters.py)
