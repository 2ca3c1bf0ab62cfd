# Shapes World open-vocabulary detection (COCO instances + the fixed base/novel split), made by
# tools/data/make_shapes_world.py: train on instances_train_base.json (novel boxes removed) with prompts of
# the 40 base names; validate/test with all 48 names, AP/AP50 reported on base and novel categories.
dataset_type = 'OVCocoDataset'
data_root = 'data/shapes_world_small/'
ov_split = 'annotations/ov_split.json'  # base/novel names, relative to data_root
img_size = 128  # as generated
meta_keys = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip', 'flip_direction', 'text',
             'custom_entities')  # fmt: skip
train_pipeline = [
    dict(type='LoadImageSafely'),
    dict(type='LoadAnnotations', with_bbox=True),
    # Scale jitter of +-20 % (shapes span 22-40 px as generated); category names carry no left/right, so
    # horizontal flips keep them true.
    dict(type='RandomResize', scale=(img_size, img_size), ratio_range=(0.8, 1.2), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    # All 40 base names in a new order each time (16 names a prompt, as GLIP samples negative categories:
    # ..._shapes-ov-16names.py, which generalises less to the novel names).
    dict(type='SampleGroundingNames', shuffle=True),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
test_pipeline = [
    dict(type='LoadImageSafely'),
    dict(type='Resize', scale=(img_size, img_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_train_base.json',
        data_prefix=dict(img='images/train/'),
        ov_split=ov_split,
        vocabulary='base',  # novel names never appear in a training prompt
        filter_cfg=dict(filter_empty_gt=True),  # images whose only shapes are novel are dropped
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=32,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='images/val/'),
        ov_split=ov_split,
        vocabulary='all',  # all 48 names
        test_mode=True,
        pipeline=test_pipeline,
    ),
)
test_dataloader = dict(
    batch_size=32,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_test.json',
        data_prefix=dict(img='images/test/'),
        ov_split=ov_split,
        vocabulary='all',
        test_mode=True,
        pipeline=test_pipeline,
    ),
)
# The base/novel groups come from the data set's split (metainfo); ann_file must follow data_root.
val_evaluator = dict(
    type='OpenVocabCocoMetric', ann_file=data_root + 'annotations/instances_val.json', metric='bbox'
)
test_evaluator = dict(
    type='OpenVocabCocoMetric', ann_file=data_root + 'annotations/instances_test.json', metric='bbox'
)
