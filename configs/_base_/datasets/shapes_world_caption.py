# Shapes World captions (COCO captions format), made by tools/data/make_shapes_world.py.
dataset_type = 'ImageCaptionDataset'
data_root = 'data/shapes_world_small/'
img_size = 64  # generated at 128 px; 64 px keeps every shape legible and the CPU demo fast

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(img_size, img_size), keep_ratio=False),
    # No flips or crops: captions state left/right/above/below relations and every object.
    dict(type='SampleCaption'),
    dict(type='PackImageTextInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(img_size, img_size), keep_ratio=False),
    dict(type='PackImageTextInputs'),
]

train_dataloader = dict(
    batch_size=32,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/captions_train.json',
        data_prefix=dict(img_path='images/train/'),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/captions_val.json',
        data_prefix=dict(img_path='images/val/'),
        pipeline=test_pipeline,
        test_mode=True,
    ),
)
test_dataloader = dict(
    batch_size=64,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/captions_test.json',
        data_prefix=dict(img_path='images/test/'),
        pipeline=test_pipeline,
        test_mode=True,
    ),
)
val_evaluator = [dict(type='RetrievalMetric'), dict(type='CaptionMetric')]
test_evaluator = val_evaluator
