# FIBER-B fine-tuned on LVIS v1 (all 1,203 categories; box AP, AP_r, AP_c, AP_f on val), at the paper's scale.
# Training prompts hold each image's names plus random negatives (up to 85 names, 256 tokens); at test the
# vocabulary is split into prompts of 40 names (GLIP's LVIS protocol) and every image is encoded per prompt.
_base_ = [
    '../_base_/models/fiber_swin-b_fpn-dyhead.py',
    '../_base_/datasets/lvis_v1_detection.py',
    '../_base_/schedules/fiber_adamw_step_24e.py',
    '../_base_/default_runtime.py',
]
model = dict(test_cfg=dict(max_per_img=300, chunked_size=40))  # LVIS keeps 300 detections an image
custom_hooks = [  # a list replaces the runtime's: its two hooks and FIBER's MODEL_EMA 0.999
    dict(type='SafeCheckpointHook'),
    dict(type='LossCurveHook', interval=10),
    dict(type='EMAHook', ema_type='ExponentialMovingAverage', momentum=0.001),
]
load_from = None  # a FIBER fine-grained checkpoint, converted (pretrain/models/fiber_converters.py)
