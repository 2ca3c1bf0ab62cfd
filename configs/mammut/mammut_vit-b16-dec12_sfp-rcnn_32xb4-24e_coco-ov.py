# MaMMUT open-vocabulary detector on OV-COCO (48 base / 17 novel; Zareian et al. 2021), paper scale: the
# MaMMUT ViT-B/16 pretrained with cropped positional embeddings (mammut_vit-b16-dec12_32xb64-10e_cc3m.py),
# 1024 x 1024 inputs with large-scale jitter (RO-ViT Sec. 4.1, after ViTDet), trained on base boxes and
# names; tested with all 65 names, AP50 on novel and base (OpenVocabCocoMetric).
_base_ = [
    '../_base_/models/mammut-det_vit-b16-dec12_sfp-rcnn.py',
    '../_base_/datasets/coco_ov_detection.py',
    '../_base_/schedules/adamw_cosine_20e.py',
    '../_base_/default_runtime.py',
]
max_epochs = 24
det_size = 1024  # RO-ViT's COCO input; the ViT's positional embeddings are up-sampled to 64 x 64
model = dict(
    pretrained=None,  # a MaMMUT checkpoint of mammut_vit-b16-dec12_32xb64-10e_cc3m.py (local path)
    templates=('a photo of a {}.', 'a photo of the {}.', 'a photo of one {}.', 'a close-up photo of a {}.'),
    # RO-ViT / F-VLM ensemble with the frozen MaMMUT's region embeddings (F-VLM Sec. 3.3: 0.35 / 0.65).
    ensemble=dict(alpha=0.35, beta=0.65, base_names={{_base_.ov_split.base}}),
)
meta_keys = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip', 'flip_direction', 'text',
             'custom_entities')  # fmt: skip
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=(det_size, det_size), ratio_range=(0.1, 2.0), keep_ratio=True),  # LSJ
    dict(
        type='RandomCrop',
        crop_type='absolute_range',
        crop_size=(det_size, det_size),
        recompute_bbox=True,
        allow_negative_crop=True,
    ),  # fmt: skip
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=(det_size, det_size)),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(det_size, det_size), keep_ratio=True),
    dict(type='Pad', size=(det_size, det_size)),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
train_dataloader = dict(
    batch_size=4,  # x 32 GPUs = 128 images a step
    batch_sampler=None,  # every input is 1024 x 1024
    dataset=dict(pipeline=train_pipeline),
)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(
    optimizer=dict(lr=2e-4, weight_decay=0.1),  # for a global batch of 128
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.5)}),  # the pretrained ViT learns slower
)
param_scheduler = [  # a list replaces the base schedule whole
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=1000),
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=0,
        end=max_epochs,
        eta_min=0.0,
        convert_to_iter_based=True,
    ),  # fmt: skip
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
auto_scale_lr = dict(base_batch_size=128)
