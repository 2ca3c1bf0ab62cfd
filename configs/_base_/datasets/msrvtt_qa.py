# MSRVTT-QA (Xu et al., ACM MM 2017): 243k open-ended questions on the MSR-VTT videos, one record each.
# data/msrvtt/: train_qa.json, val_qa.json, test_qa.json, videos/videoN.mp4.
dataset_type = 'MSRVTTQADataset'
data_root = 'data/msrvtt/'
num_frames = 32  # as the captioning config
frame_size = 224

train_pipeline = [
    dict(type='SampleFrames', num_frames=num_frames, mode='random_segment'),
    dict(type='DecodeVideo', backend='decord', on_error='skip', timeout=30),  # 30 s per clip; skips counted
    dict(type='ResizeVideo', scale=(frame_size, frame_size)),
    dict(type='PackVideoTextInputs'),
]
test_pipeline = [
    dict(type='SampleFrames', num_frames=num_frames, mode='uniform'),
    dict(type='DecodeVideo', backend='decord', timeout=30),  # 30 s per clip; a bad clip raises
    dict(type='ResizeVideo', scale=(frame_size, frame_size)),
    dict(type='PackVideoTextInputs'),
]
train_dataloader = dict(
    batch_size=16,  # per GPU; 32 GPUs x 16 = 512 questions
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='train_qa.json',
        data_prefix=dict(video_path='videos/'),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=16,
    num_workers=8,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='val_qa.json',
        data_prefix=dict(video_path='videos/'),
        pipeline=test_pipeline,
        test_mode=True,
    ),
)
test_dataloader = dict(
    batch_size=16,
    num_workers=8,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='test_qa.json',
        data_prefix=dict(video_path='videos/'),
        pipeline=test_pipeline,
        test_mode=True,
    ),
)
val_evaluator = [dict(type='VideoQAMetric')]  # exact match after answer normalisation
test_evaluator = val_evaluator
