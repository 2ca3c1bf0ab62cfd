# Tiny BEiT-3 masked data modeling (BEiT-3 Sec. 2.2) on Shapes World captions, from scratch on one CPU thread.
# Validation at the end: dual-encoder retrieval from the unprojected cls / first-token features (a baseline
# for the contrastive fine-tune, beit3_tiny-patch16-128_1xb32-10e_shapes-ret.py).
_base_ = [
    '../_base_/datasets/shapes_world_caption.py',
    '../_base_/schedules/adamw_cosine_20e.py',
    '../_base_/default_runtime.py',
]
# 1,600 train images / 32 = 50 iterations an epoch -> 600 iterations, 0.7-1.2 s each on one thread (8-12 min).
max_epochs = 12
model = dict(
    type='BEiT3',
    data_preprocessor=dict(
        type='ImgDataPreprocessor',
        mean=[123.675, 116.28, 103.53],  # ImageNet RGB statistics x 255 (BEiT's)
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
    ),
    backbone=dict(
        type='MultiwayTransformer',
        img_size=128,  # as generated; 16 px patches -> 8 x 8 = 64 patches (shapes span 2-3 patches)
        patch_size=16,
        embed_dim=192,  # ViT-Tiny width, 3 heads of 64 (BEiT-3 base: 768 / 12)
        depth=6,
        num_heads=3,
        ffn_dim=768,  # 4 x width, as BEiT-3
        num_vl_layers=2,  # the top 2 of 6 layers (BEiT-3: top 3 of 12 / 24 / 40)
        max_text_len=32,  # the tokenizer's context length
        attention='shared',  # the paper's shared self-attention
        drop_path_rate=0.0,  # 6 layers, 600 iterations: no stochastic depth
    ),
    # The word-level Shapes World vocabulary (129 ids); the mask token is appended as id 129.
    tokenizer=dict(
        type='HFTokenizer',
        path='{{ fileDirname }}/../_base_/tokenizers/shapes_world.json',
        context_length=32,
    ),
    mdm_loss=dict(type='MDMLoss', pixel_weight=1.0),
    # No VQ-KD checkpoint exists for 128 px Shapes World and none is downloaded: the documented fallback
    # target, per-patch normalised pixels regressed with MSE (a random frozen VQ-KD would give ids without
    # meaning).
    visual_target=dict(type='PixelTarget', patch_size=16),
    mixture=dict(image=1, text=1, pair=1),  # BEiT-3: 2048 images, 2048 texts, 2048 pairs a step (Sec. 2.4)
    txt_mask_prob=0.15,  # BEiT-3 Sec. 2.2: monomodal texts
    pair_txt_mask_prob=0.5,  # BEiT-3 Sec. 2.2: texts of image-text pairs
    img_mask_ratio=0.4,  # BEiT-3 Sec. 2.2: 40 % of the patches, block-wise (BEiT)
    min_mask_patches=5,  # BEiT's 16 of 14 x 14 patches scaled to 8 x 8 (16 x 64 / 196)
)
optim_wrapper = dict(
    # BEiT-3 Sec. 2.4: AdamW (0.9, 0.98), eps 1e-6, weight decay 0.05; lr 1e-3 from scratch at batch 32 (as
    # the tiny MaMMUT / FIBER configs; BEiT-3's peak 1e-3 is at batch 6144).
    optimizer=dict(lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={'cls_token': dict(decay_mult=0.0), 'mask_token': dict(decay_mult=0.0)},
    ),
)
param_scheduler = [  # a list replaces the base schedule whole
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=100),
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=0,
        end=max_epochs,
        eta_min=1e-5,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
auto_scale_lr = dict(base_batch_size=32)
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=max_epochs))
val_evaluator = [dict(type='RetrievalMetric')]  # BEiT3.predict gives embeddings, no captions
test_evaluator = val_evaluator
