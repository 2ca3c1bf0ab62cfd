# Tiny MaMMUT on Shapes World captions with the training images streamed from WebDataset tar shards: the
# data path of web-scale corpora (LAION, CC3M as img2dataset writes them), checked end to end on Shapes World.
# Validation and test still read the COCO captions files. Make the shards once (8 x 200 samples + sizes.json):
#   python tools/data/make_webdataset.py --ann-file data/shapes_world_small/annotations/captions_train.json \
#       --img-dir data/shapes_world_small/images/train --out data/shapes_world_small/wds \
#       --prefix shapes-train --num-shards 8
_base_ = './mammut_vit-tiny-dec4_1xb32-30e_shapes-cap.py'

img_size = 128
# The base pipeline minus LoadImageFromFile: WebDataset decodes the image bytes itself, where the shard and
# member are known for the skip ledger.
train_pipeline = [
    dict(type='Resize', scale=(img_size, img_size), keep_ratio=False),
    dict(type='SampleCaption'),
    dict(type='RandomFlipCaption', prob=0.5),
    dict(type='PackImageTextInputs'),
]
train_dataloader = dict(
    # A stream splits itself across processes and workers; torch's DataLoader refuses any sampler with it.
    sampler=None,
    dataset=dict(
        _delete_=True,  # another dataset type: none of ImageCaptionDataset's arguments apply
        type='WebDataset',
        data_root='data/shapes_world_small/',
        # 8 shards: enough for up to 8 processes x workers; the epoch length (1,600) comes from sizes.json.
        shards='wds/shapes-train-{000000..000007}.tar',
        # The writer shuffled the samples already; 256 (above a shard's 200) also mixes neighbouring shards.
        shuffle_buffer=256,
        on_error='skip',  # corrupt samples are counted in WORK_DIR/skipped_samples.jsonl
        pipeline=train_pipeline,
    ),
)
# The default runtime's hooks (a list replaces them whole), plus the epoch for the stream's shard shuffle.
custom_hooks = [
    dict(type='SafeCheckpointHook'),
    dict(type='LossCurveHook', interval=10),
    dict(type='SetDatasetEpochHook'),
]
