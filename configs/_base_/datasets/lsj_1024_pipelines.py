# 1024 x 1024 detection pipelines with large-scale jitter (ViTDet / RO-ViT: resize by 0.1-2.0, crop and pad
# to 1024), for open-vocabulary data sets whose samples carry their vocabulary (`text`). Named lsj_* so that
# a config can take them next to a data set base's own train_pipeline / test_pipeline.
lsj_size = 1024
lsj_meta_keys = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip', 'flip_direction',
                 'text', 'custom_entities')  # fmt: skip
lsj_train_pipeline = [
    dict(type='LoadImageSafely'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=(lsj_size, lsj_size), ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(
        type='RandomCrop',
        crop_type='absolute_range',
        crop_size=(lsj_size, lsj_size),
        recompute_bbox=True,
        allow_negative_crop=True,
    ),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=(lsj_size, lsj_size)),
    dict(type='PackDetInputs', meta_keys=lsj_meta_keys),
]
lsj_test_pipeline = [
    dict(type='LoadImageSafely'),
    dict(type='Resize', scale=(lsj_size, lsj_size), keep_ratio=True),
    dict(type='Pad', size=(lsj_size, lsj_size)),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=lsj_meta_keys),
]
