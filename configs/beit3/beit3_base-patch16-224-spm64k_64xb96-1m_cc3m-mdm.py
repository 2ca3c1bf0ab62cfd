# BEiT-3 base masked data modeling (BEiT-3 Sec. 2.2, 2.4) on an image-text pair corpus (CC3M as open_clip
# reads it). BEiT-3 draws its images (ImageNet-21K), texts (160 GB) and pairs (21M: CC12M, CC3M, SBU, COCO,
# VG) from separate corpora; this config builds all three groups from the pairs (pretrain/models/beit3.py).
_base_ = [
    '../_base_/models/beit3_base-patch16-224.py',
    '../_base_/datasets/cc3m.py',
    '../_base_/default_runtime.py',
]
max_iters = 1_000_000  # 1M steps (Sec. 2.4, Table 11)
train_dataloader = dict(batch_size=96)  # per GPU; 64 GPUs x 96 = 6144 = 2048 x 3 (Sec. 2.4)
# True recomputes every Multiway layer in the backward pass (memory for ~1 more forward; on in the _fsdp.py
# variant, which also shards the weights over the GPUs).
model = dict(backbone=dict(grad_checkpointing=False))
# Mixed precision: `tools/train.py CONFIG --amp` (AmpOptimWrapper on CUDA: float16 autocast with dynamic loss
# scaling; add `--cfg-options optim_wrapper.dtype=bfloat16` for bfloat16 on Ampere or newer GPUs).
optim_wrapper = dict(
    type='OptimWrapper',
    # AdamW beta (0.9, 0.98), eps 1e-6, weight decay 0.05, peak lr 1e-3 (Sec. 2.4).
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05),
    clip_grad=dict(max_norm=3.0),  # unilm BEiT pretraining's default clip_grad
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            'cls_token': dict(decay_mult=0.0),
            'mask_token': dict(decay_mult=0.0),
            'pos_embed': dict(decay_mult=0.0),
        },
    ),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=10_000),  # 10k warm-up (Sec. 2.4)
    dict(type='CosineAnnealingLR', by_epoch=False, begin=10_000, end=max_iters, eta_min=1e-5),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=50_000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=10_000))
log_processor = dict(by_epoch=False)
auto_scale_lr = dict(enable=False, base_batch_size=6144)
# Zero-shot dual-encoder retrieval from the unprojected features; BEiT3.predict gives no captions.
val_evaluator = [dict(type='RetrievalMetric')]
test_evaluator = val_evaluator
