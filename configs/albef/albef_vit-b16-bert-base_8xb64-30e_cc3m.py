# ALBEF at paper scale (Li et al., NeurIPS 2021, Sec. 4): ViT-B/16 + BERT-base (6 text
# + 6 fusion layers), ITC with momentum distillation, ITM with hard negatives, MLM, on CC3M-style pairs.
# Needs local weights: a DeiT-B/16 ImageNet checkpoint converted to MaMMUTViT keys (set model.image_encoder's
# init_cfg) and a HuggingFace bert-base-uncased folder (config.json, model.safetensors, tokenizer.json).
_base_ = [
    '../_base_/models/albef_vit-b16-bert-base.py',
    '../_base_/datasets/cc3m.py',
    '../_base_/default_runtime.py',
]
bert = 'data/pretrained/bert-base-uncased/'  # the base model's (text_pretrained: its weights)
img_size = 256  # ALBEF pretrains at 256 x 256 (random crops), fine-tunes retrieval at 384
max_epochs = 30
model = dict(
    image_encoder=dict(
        img_size=img_size,
        drop_path_rate=0.1,  # ALBEF's VisionTransformer
        grad_checkpointing=False,  # True recomputes blocks in the backward pass (memory for ~1 more forward)
    ),
    text_encoder=dict(
        grad_checkpointing=False,  # as the image encoder's (momentum copies never recompute: no gradients)
    ),
    text_pretrained=bert,
    alpha_warmup_iters=6300,  # the first epoch: ~3.3M CC3M pairs / 512
    itc_loss=dict(type='DistilledContrastiveLoss', loss_weight=1.0),
    itm_loss=dict(type='ITMLoss', loss_weight=1.0),
    mlm_loss=dict(
        type='MLMLoss', mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1, loss_weight=1.0
    ),
)
train_pipeline = [
    dict(type='LoadImageSafely'),
    # ALBEF adds RandomResizedCrop(scale=(0.5, 1.0)) and RandAugment; here resize and a caption-aware flip.
    dict(type='Resize', scale=(img_size, img_size), keep_ratio=False),
    dict(type='SampleCaption'),
    dict(type='RandomFlipCaption', prob=0.5),
    dict(type='PackImageTextInputs'),
]
test_pipeline = [
    dict(type='LoadImageSafely'),
    dict(type='Resize', scale=(img_size, img_size), keep_ratio=False),
    dict(type='PackImageTextInputs'),
]
train_dataloader = dict(batch_size=64, dataset=dict(pipeline=train_pipeline))  # 8 GPUs x 64 = 512 (ALBEF)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [dict(type='RetrievalMetric')]
test_evaluator = [dict(type='RetrievalMetric', rerank_k=128)]  # ALBEF re-ranks the top 128 (k_test)
# Mixed precision: `tools/train.py CONFIG --amp` (AmpOptimWrapper on CUDA: float16 autocast with dynamic loss
# scaling; add `--cfg-options optim_wrapper.dtype=bfloat16` for bfloat16 on Ampere or newer GPUs).
# No FSDP variant: ALBEF's momentum update writes the momentum weights in place inside the forward pass, which
# FSDP's flat parameters refuse (toolkit/distributed.py); 187M trained parameters train with DDP.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.02),  # ALBEF Sec. 4
    paramwise_cfg=dict(custom_keys={'temp': dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=1000),  # warm-up to 1e-4 in 1k its
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=0,
        end=max_epochs,
        eta_min=1e-5,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=512)
