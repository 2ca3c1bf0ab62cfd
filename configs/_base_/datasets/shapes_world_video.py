# Shapes World videos in the MSR-VTT formats: captions and MSRVTT-QA questions of the same videos, joined per
# video (qa_file) so one encoder pass serves captioning, retrieval and question answering.
# Made by tools/data/make_shapes_world.py (16 frames of 64 x 64 at 8 fps).
dataset_type = 'MSRVTTCaptionDataset'
data_root = 'data/shapes_world_small/'
num_frames = 16  # every frame of a Shapes World clip
frame_size = 64

train_pipeline = [
    dict(type='SampleFrames', num_frames=num_frames, mode='random_segment'),
    dict(type='DecodeVideo', backend='decord', on_error='skip', timeout=30),  # 30 s per clip; skips counted
    dict(type='ResizeVideo', scale=(frame_size, frame_size)),
    dict(type='SampleCaption'),
    # Mirroring swaps left/right and clockwise/counterclockwise in captions, questions and answers.
    dict(type='RandomFlipVideo', prob=0.5),
    dict(type='PackVideoTextInputs'),
]
test_pipeline = [
    dict(type='SampleFrames', num_frames=num_frames, mode='uniform'),
    dict(type='DecodeVideo', backend='decord', timeout=30),  # 30 s per clip; a bad clip raises
    dict(type='ResizeVideo', scale=(frame_size, frame_size)),
    dict(type='PackVideoTextInputs'),
]
train_dataloader = dict(
    batch_size=32,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='msrvtt/train_val_videodatainfo.json',
        qa_file='msrvtt/train_qa.json',
        split='train',
        data_prefix=dict(video_path='videos/'),
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
        ann_file='msrvtt/train_val_videodatainfo.json',
        qa_file='msrvtt/val_qa.json',
        split='validate',
        data_prefix=dict(video_path='videos/'),
        pipeline=test_pipeline,
        test_mode=True,
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
        ann_file='msrvtt/test_videodatainfo.json',
        qa_file='msrvtt/test_qa.json',
        split='test',
        data_prefix=dict(video_path='videos/'),
        pipeline=test_pipeline,
        test_mode=True,
    ),
)
val_evaluator = [
    dict(type='RetrievalMetric'),
    dict(type='CaptionMetric'),
    # Motion questions ask for a direction or a sense of rotation: only the clip's time order answers them.
    dict(
        type='VideoQAMetric',
        # motion: direction questions; move: translations (left/right/up/down); turn: rotation sense
        groups=dict(
            motion=r'^which way does', move=r'^which way does .* move\?$', turn=r'^which way does .* turn\?$'
        ),
    ),
]
test_evaluator = val_evaluator
