# LVIS v1 (Gupta et al., CVPR 2019) with all 1,203 categories, as FIBER's LVIS fine-tuning and GLIP's LVIS
# evaluation: box AP with AP_r / AP_c / AP_f (mmdet's LVISMetric, as OpenVocabLVISMetric for NumPy >= 1.24).
# Images are COCO 2017's (data_root/train2017, val2017), found through the files' coco_url.
dataset_type = 'OVLVISDataset'
data_root = 'data/coco/'
backend_args = None
meta_keys = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip', 'flip_direction', 'text',
             'custom_entities')  # fmt: skip
tokenizer = dict(type='HFTokenizer', path='data/pretrained/roberta-base/tokenizer.json', context_length=256)
train_pipeline = [
    dict(type='LoadImageSafely', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='RandomChoiceResize',  # FIBER's multi-scale training (short side 480-800, long side <= 1333)
        scales=[(1333, 480), (1333, 560), (1333, 640), (1333, 720), (1333, 800)],
        keep_ratio=True,
    ),
    dict(type='RandomFlip', prob=0.5),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    # The image's names plus random negatives, up to FIBER's RANDOM_SAMPLE_NEG = 85 names and 256 tokens.
    dict(type='SampleGroundingNames', max_names=85, max_tokens=256, tokenizer=tokenizer, shuffle=True),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
test_pipeline = [
    dict(type='LoadImageSafely', backend_args=backend_args),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
train_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),  # FIBER samples images uniformly (no RFS)
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/lvis_v1_train.json',
        data_prefix=dict(img=''),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
        backend_args=backend_args,
    ),
)
val_dataloader = dict(
    batch_size=1,  # every image is encoded once per prompt chunk (31 chunks of 40 names)
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/lvis_v1_val.json',
        data_prefix=dict(img=''),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(
    type='OpenVocabLVISMetric', ann_file=data_root + 'annotations/lvis_v1_val.json', metric='bbox'
)
test_evaluator = val_evaluator
