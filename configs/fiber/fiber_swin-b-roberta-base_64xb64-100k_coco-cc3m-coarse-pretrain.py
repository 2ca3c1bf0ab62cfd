# FIBER-B coarse-grained pretraining (Dou et al., NeurIPS 2022, Sec. 3.2 and microsoft/FIBER
# coarse_grained/fiber/config.py, task_pretrain_mlm_itm_itc): ITC + ITM with hard negatives + MLM on
# image-text pairs, Swin-B (ImageNet-22k, 384 px) and RoBERTa-base fused in their last 6 blocks/layers.
# FIBER trains on COCO, Conceptual Captions, SBU and Visual Genome (4M images); the two sets with configs here
# are COCO Captions 2017 and CC3M. Local files, nothing is downloaded: data/pretrained/roberta-base/ (Hugging
# Face folder: config.json, weights, tokenizer.json) and the official Swin-B 22k 384 checkpoint.
_base_ = [
    '../_base_/datasets/coco_caption.py',
    '../_base_/default_runtime.py',
]
roberta = 'data/pretrained/roberta-base/'
swin_b_22k = 'data/pretrained/swin_base_patch4_window12_384_22k.pth'  # official Swin release
img_size = 384  # FIBER image_size for pretraining
max_iters = 100000  # FIBER max_steps
model = dict(
    type='FIBER',
    data_preprocessor=dict(
        type='ImgDataPreprocessor',
        mean=[123.675, 116.28, 103.53],  # ImageNet RGB statistics x 255 (Swin's)
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
    ),
    backbone=dict(
        type='FIBERBackbone',
        preset='fiber-b',  # Swin-B 384 (window 12) + RoBERTa-base, K = 6 fused blocks/layers
        image=dict(
            out_indices=(3,),  # the heads pool the last stage only
            convert_weights=True,  # official Swin keys -> mmdet's
            init_cfg=dict(type='Pretrained', checkpoint=swin_b_22k),
        ),
        text=dict(pretrained=roberta),
        with_cp=True,  # 64 pairs per GPU run the fused backbone on up to 4 x 64 pairs a step
    ),
    tokenizer=dict(type='HFTokenizer', path=roberta + 'tokenizer.json', context_length=40),  # max_text_len
    mask_token_id=50264,  # RoBERTa's <mask>
    embed_dim=768,  # FIBER projects both ITC features to hidden_size 768
    head_dim=768,
    itc_loss=dict(type='InfoNCELoss', loss_weight=1.0),  # loss_names itm = mlm = itc = 1
    itm_loss=dict(type='ITMLoss', loss_weight=1.0),
    mlm_loss=dict(
        type='MLMLoss', mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1, loss_weight=1.0
    ),
    temperature_init=0.07,
    itm_eval_batch_size=256,
)

train_pipeline = [
    dict(type='LoadImageSafely'),
    dict(type='Resize', scale=(img_size, img_size), keep_ratio=False),
    dict(type='SampleCaption'),
    dict(type='PackImageTextInputs'),
]
test_pipeline = [
    dict(type='LoadImageSafely'),
    dict(type='Resize', scale=(img_size, img_size), keep_ratio=False),
    dict(type='PackImageTextInputs'),
]
train_dataloader = dict(
    batch_size=64,  # per GPU; 64 GPUs x 64 = 4096, FIBER's batch_size
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        _delete_=True,  # the COCO dataset of the base becomes one part of a concatenation
        type='ConcatDataset',
        ignore_keys=['dataset_type'],  # image-caption JSON and CSV parts differ only in their type name
        datasets=[
            dict(
                type='ImageCaptionDataset',
                data_root='data/coco/',
                ann_file='annotations/captions_train2017.json',
                data_prefix=dict(img_path='train2017/'),
                pipeline=train_pipeline,
            ),
            dict(
                type='ImageTextCsvDataset',
                data_root='data/cc3m/',
                ann_file='cc3m_train.tsv',
                check_files=False,  # 3M stat calls at start-up; a missing image fails when it is read
                pipeline=train_pipeline,
            ),
        ],
    ),
)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
# Validation ranks with the dual encoder only (fast); the test re-ranks the top 128 both ways with ITM (ALBEF
# / FIBER style): ~3.8M fused pairs on COCO's 5k images x 25k captions, scored on the main process.
val_evaluator = [dict(type='RetrievalMetric')]
test_evaluator = [dict(type='RetrievalMetric', rerank_k=128)]

# Mixed precision: `tools/train.py CONFIG --amp` (AmpOptimWrapper on CUDA: float16 autocast with dynamic loss
# scaling; add `--cfg-options optim_wrapper.dtype=bfloat16` for bfloat16 on Ampere or newer GPUs).
# Sharded over the GPUs instead of replicated: the _fsdp.py variant of this config.
optim_wrapper = dict(
    type='OptimWrapper',
    # FIBER's set_schedule: AdamW, learning_rate 1e-5, betas (0.9, 0.98), weight_decay 0.01, no clipping.
    optimizer=dict(type='AdamW', lr=1e-5, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01),
    clip_grad=None,
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={  # lr_mult_cross_modal = lr_mult_head = 5
            'cross_attn': dict(lr_mult=5.0),
            'img_proj': dict(lr_mult=5.0),
            'txt_proj': dict(lr_mult=5.0),
            'itm_head': dict(lr_mult=5.0),
            'lm_head': dict(lr_mult=5.0),
            'logit_scale': dict(decay_mult=0.0),
        },
    ),
)
param_scheduler = [  # warmup_steps 0.1, then linear decay to end_lr 0 (decay_power 1)
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=max_iters // 10),
    dict(
        type='LinearLR',
        start_factor=1.0,
        end_factor=0.0,
        by_epoch=False,
        begin=max_iters // 10,
        end=max_iters,
    ),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=4096)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=10000, max_keep_ckpts=3, save_last=True),
)
log_processor = dict(by_epoch=False)
