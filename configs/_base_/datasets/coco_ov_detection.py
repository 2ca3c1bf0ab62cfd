# Open-vocabulary COCO (Zareian et al., OVR-CNN, CVPR 2021, Sec. 4.1): train on the 48 base categories of
# COCO 2017 train (novel boxes dropped, their images kept), test on val2017 with the 48 base + 17 novel names
# (the 15 other COCO categories are not evaluated). FIBER's image sizes: 800 x 1333 test, multi-scale train.
dataset_type = 'OVCocoDataset'
data_root = 'data/coco/'
backend_args = None
ov_split = dict(
    base=['person', 'bicycle', 'car', 'motorcycle', 'train', 'truck', 'boat', 'bench', 'bird', 'horse',
          'sheep', 'bear', 'zebra', 'giraffe', 'backpack', 'handbag', 'suitcase', 'frisbee', 'skis', 'kite',
          'surfboard', 'bottle', 'fork', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli',
          'carrot', 'pizza', 'donut', 'chair', 'bed', 'toilet', 'tv', 'laptop', 'mouse', 'remote',
          'microwave', 'oven', 'toaster', 'refrigerator', 'book', 'clock', 'vase', 'toothbrush'],
    novel=['airplane', 'bus', 'cat', 'dog', 'cow', 'elephant', 'umbrella', 'tie', 'snowboard', 'skateboard',
           'cup', 'knife', 'cake', 'couch', 'keyboard', 'sink', 'scissors'],
)  # fmt: skip
meta_keys = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip', 'flip_direction', 'text',
             'custom_entities')  # fmt: skip
train_pipeline = [
    dict(type='LoadImageSafely', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='RandomChoiceResize',  # AUGMENT.MULT_MIN_SIZE_TRAIN (480, ..., 800), MAX_SIZE_TRAIN 1333
        scales=[(1333, 480), (1333, 560), (1333, 640), (1333, 720), (1333, 800)],
        keep_ratio=True,
    ),
    dict(type='RandomFlip', prob=0.5),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='SampleGroundingNames', shuffle=True),  # every base name, in a new order each time
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
test_pipeline = [
    dict(type='LoadImageSafely', backend_args=backend_args),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),  # MIN_SIZE_TEST 800, MAX_SIZE_TEST 1333
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
train_dataloader = dict(
    batch_size=1,  # x 32 GPUs = FIBER's IMS_PER_BATCH 32
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        ov_split=ov_split,
        vocabulary='base',  # training prompts and boxes: base categories only
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
        backend_args=backend_args,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        ov_split=ov_split,
        vocabulary='base+novel',  # the 65 categories of OV-COCO
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(
    type='OpenVocabCocoMetric', ann_file=data_root + 'annotations/instances_val2017.json', metric='bbox'
)
test_evaluator = val_evaluator
