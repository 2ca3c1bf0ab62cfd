# MSR-VTT captioning, official split (6,513 train / 497 val / 2,990 test videos, 20 sentences each).
# data/msrvtt/: train_val_videodatainfo.json, test_videodatainfo.json, videos/videoN.mp4.
dataset_type = 'MSRVTTCaptionDataset'
data_root = 'data/msrvtt/'
num_frames = 32  # TubeViT's tube configurations are designed for 32 x 224 x 224 clips
frame_size = 224

train_pipeline = [
    dict(type='SampleFrames', num_frames=num_frames, mode='random_segment'),  # TSN-style, one per segment
    dict(type='DecodeVideo', backend='decord', on_error='skip', timeout=30),  # 30 s per clip; skips counted
    dict(type='ResizeVideo', scale=(frame_size, frame_size)),
    dict(type='SampleCaption'),
    dict(type='PackVideoTextInputs'),
]
test_pipeline = [
    dict(type='SampleFrames', num_frames=num_frames, mode='uniform'),
    dict(type='DecodeVideo', backend='decord', timeout=30),  # 30 s per clip; a bad clip raises
    dict(type='ResizeVideo', scale=(frame_size, frame_size)),
    dict(type='PackVideoTextInputs'),
]
train_dataloader = dict(
    batch_size=16,  # per GPU; 32 GPUs x 16 = 512 clips
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='train_val_videodatainfo.json',
        split='train',
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
        ann_file='train_val_videodatainfo.json',
        split='validate',
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
        ann_file='test_videodatainfo.json',
        split='test',
        data_prefix=dict(video_path='videos/'),
        pipeline=test_pipeline,
        test_mode=True,
    ),
)
val_evaluator = [dict(type='CaptionMetric')]
test_evaluator = val_evaluator
