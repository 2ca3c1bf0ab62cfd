# Shapes World captions (COCO captions format), made by tools/data/make_shapes_world.py.
dataset_type = 'ImageCaptionDataset'
data_root = 'data/shapes_world_small/'
img_size = 128  # as generated; the ViT sees it through 16 px patches (8 x 8 tokens)

train_pipeline = [
    dict(type='LoadImageSafely'),
    dict(type='Resize', scale=(img_size, img_size), keep_ratio=False),
    # No crops (captions name every object); flips swap left/right in the caption to stay true.
    dict(type='SampleCaption'),
    dict(type='RandomFlipCaption', prob=0.5),
    dict(type='PackImageTextInputs'),
]
test_pipeline = [
    dict(type='LoadImageSafely'),
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
