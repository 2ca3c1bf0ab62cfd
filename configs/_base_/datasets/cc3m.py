# Conceptual Captions 3M as open_clip reads it: TSV files with `filepath` and `title` columns
# (e.g. written by img2dataset), images under data_root.
dataset_type = 'ImageTextCsvDataset'
data_root = 'data/cc3m/'
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
        ann_file='cc3m_train.tsv',
        data_prefix=dict(img_path=''),
        check_files=False,  # 3M stat calls at start-up; a missing image fails when it is read
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
        ann_file='cc3m_val.tsv',
        data_prefix=dict(img_path=''),
        pipeline=test_pipeline,
        test_mode=True,
    ),
)
test_dataloader = val_dataloader
val_evaluator = [dict(type='RetrievalMetric'), dict(type='CaptionMetric')]
test_evaluator = val_evaluator
