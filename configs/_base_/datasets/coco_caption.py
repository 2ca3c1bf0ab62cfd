# COCO Captions 2017 (captions_train2017.json / captions_val2017.json) at 224 px.
dataset_type = 'ImageCaptionDataset'
data_root = 'data/coco/'
img_size = 224

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
    batch_size=64,  # per GPU; 32 GPUs x 64 = 2048 global
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/captions_train2017.json',
        data_prefix=dict(img_path='train2017/'),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/captions_val2017.json',
        data_prefix=dict(img_path='val2017/'),
        pipeline=test_pipeline,
        test_mode=True,
    ),
)
test_dataloader = val_dataloader
val_evaluator = [dict(type='RetrievalMetric'), dict(type='CaptionMetric')]
test_evaluator = val_evaluator
