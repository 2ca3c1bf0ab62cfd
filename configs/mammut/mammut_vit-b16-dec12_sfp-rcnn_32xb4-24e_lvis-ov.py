# MaMMUT open-vocabulary detector on OV-LVIS (ViLD's split: the 866 frequent + common categories are base,
# the 337 rare ones novel), paper scale; OpenVocabLVISMetric reports AP_r (novel), AP_c and AP_f. The OV-COCO
# recipe (mammut_vit-b16-dec12_sfp-rcnn_32xb4-24e_coco-ov.py: 1024 px LSJ, ensemble 0.35 / 0.65) with LVIS
# data, repeat-factor sampling and 300 detections an image.
_base_ = [
    '../_base_/models/mammut-det_vit-b16-dec12_sfp-rcnn.py',
    '../_base_/datasets/lvis_v1_detection.py',
    '../_base_/schedules/adamw_cosine_20e.py',
    '../_base_/default_runtime.py',
]
max_epochs = 24
det_size = 1024
data_root = 'data/coco/'  # as the LVIS data set base
lvis_categories = 'annotations/lvis_v1_val.json'  # any LVIS v1 file: its categories carry the frequencies
model = dict(
    pretrained=None,  # a MaMMUT checkpoint of mammut_vit-b16-dec12_32xb64-10e_cc3m.py (local path)
    templates=('a photo of a {}.', 'a photo of the {}.', 'a photo of one {}.', 'a close-up photo of a {}.'),
    # Names outside frequent + common (the rare ones) get beta.
    ensemble=dict(alpha=0.35, beta=0.65, base_names=data_root + lvis_categories),
    test_cfg=dict(rcnn=dict(score_thr=0.0001, max_per_img=300)),  # LVIS keeps 300 detections an image
)
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
    dict(type='PackDetInputs', meta_keys={{_base_.meta_keys}}),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(det_size, det_size), keep_ratio=True),
    dict(type='Pad', size=(det_size, det_size)),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys={{_base_.meta_keys}}),
]
train_dataloader = dict(
    _delete_=True,
    batch_size=4,  # x 32 GPUs = 128 images a step
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='ClassBalancedDataset',  # repeat-factor sampling (Gupta et al. 2019, Sec. 5)
        oversample_thr=1e-3,
        dataset=dict(
            type='OVLVISDataset',
            data_root=data_root,
            ann_file='annotations/lvis_v1_train.json',
            data_prefix=dict(img=''),
            ov_split=lvis_categories,  # frequent + common base, rare novel
            vocabulary='base',  # rare boxes and names never reach training
            filter_cfg=dict(filter_empty_gt=True, min_size=32),
            pipeline=train_pipeline,
        ),
    ),
)
val_dataloader = dict(
    dataset=dict(ov_split=lvis_categories, vocabulary='all', pipeline=test_pipeline),  # all 1,203 names
)
test_dataloader = val_dataloader
optim_wrapper = dict(
    optimizer=dict(lr=2e-4, weight_decay=0.1),  # for a global batch of 128
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.5)}),
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
