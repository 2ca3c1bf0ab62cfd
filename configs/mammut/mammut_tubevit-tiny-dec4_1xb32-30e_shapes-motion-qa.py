# Shapes World video model trained from scratch on the motion questions only ("which way does the <colour>
# <shape> move/turn?": left, right, up, down, clockwise, counterclockwise). In the multi-task config they are
# 1 question in 12 and about 1 answer token in 400 of a batch: their direction signal is drowned (test
# accuracy at chance). On their own they are learnt; the frames-only ablation shows what the tubes add.
_base_ = ['./mammut_tubevit-tiny-dec4_1xb32-40e_shapes-vid.py']
max_epochs = 30  # 761 training questions / 32 = 24 iterations an epoch -> 720 iterations
data_root = 'data/shapes_world_small/'
motion = r'^which way does'  # the MSRVTT-QA style motion questions
train_pipeline = [
    dict(type='SampleFrames', num_frames=16, mode='random_segment'),
    dict(type='DecodeVideo', backend='decord', on_error='skip', timeout=30),  # 30 s per clip; skips counted
    dict(type='ResizeVideo', scale=(64, 64)),
    dict(type='RandomFlipVideo', prob=0.5),  # swaps left/right and clockwise/counterclockwise
    dict(type='PackVideoTextInputs'),
]
test_pipeline = [
    dict(type='SampleFrames', num_frames=16, mode='uniform'),
    dict(type='DecodeVideo', backend='decord', timeout=30),  # 30 s per clip; a bad clip raises
    dict(type='ResizeVideo', scale=(64, 64)),
    dict(type='PackVideoTextInputs'),
]
qa_dataset = dict(
    type='MSRVTTQADataset',
    data_root=data_root,
    data_prefix=dict(video_path='videos/'),
    question_pattern=motion,
)
train_dataloader = dict(
    dataset=dict(_delete_=True, ann_file='msrvtt/train_qa.json', pipeline=train_pipeline, **qa_dataset)
)
val_dataloader = dict(
    dataset=dict(
        _delete_=True, ann_file='msrvtt/val_qa.json', pipeline=test_pipeline, test_mode=True, **qa_dataset
    )
)
test_dataloader = dict(
    dataset=dict(
        _delete_=True, ann_file='msrvtt/test_qa.json', pipeline=test_pipeline, test_mode=True, **qa_dataset
    )
)
val_evaluator = [
    dict(
        type='VideoQAMetric',
        groups=dict(move=r'^which way does .* move\?$', turn=r'^which way does .* turn\?$'),
    )
]
test_evaluator = val_evaluator
param_scheduler = [  # a list replaces the base schedule whole
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=50),
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=0,
        end=max_epochs,
        eta_min=1e-5,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=5)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs))
