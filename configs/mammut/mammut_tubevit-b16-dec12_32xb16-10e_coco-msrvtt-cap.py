# Joint image + video fine-tuning (TubeViT Sec. 3.4, MaMMUT Sec. 3.3): the image-pretrained MaMMUT continues
# on COCO images and MSR-VTT clips together. Each batch comes from one source (GroupBySourceBatchSampler),
# so image batches run the plain ViT and clip batches the tubes through the same ViT and decoder.
_base_ = [
    '../_base_/models/mammut_tubevit-b16-dec12.py',
    '../_base_/datasets/msrvtt_caption.py',
    '../_base_/schedules/adamw_cosine_20e.py',
    '../_base_/default_runtime.py',
]
load_from = 'work_dirs/mammut_vit-b16-dec12_32xb64-20e_coco-cap/epoch_20.pth'  # our COCO image model
max_epochs = 10
coco_root = 'data/coco/'
image_pipeline = [
    dict(type='LoadImageSafely'),
    dict(type='Resize', scale=(224, 224), keep_ratio=False),
    dict(type='SampleCaption'),
    dict(type='PackImageTextInputs'),
]
train_dataloader = dict(
    batch_sampler=dict(type='GroupBySourceBatchSampler'),
    dataset=dict(
        _delete_=True,  # the MSR-VTT dataset of the base becomes one part of a concatenation
        type='ConcatDataset',
        ignore_keys=['dataset_type'],  # image-caption and MSR-VTT parts differ only in their type name
        datasets=[
            dict(
                type='ImageCaptionDataset',
                data_root=coco_root,
                ann_file='annotations/captions_train2017.json',
                data_prefix=dict(img_path='train2017/'),
                pipeline=image_pipeline,
            ),
            dict(
                type='MSRVTTCaptionDataset',
                data_root='data/msrvtt/',
                ann_file='train_val_videodatainfo.json',
                split='train',
                data_prefix=dict(video_path='videos/'),
                pipeline={{_base_.train_pipeline}},
            ),
        ],
    ),
)
model = dict(
    image_encoder=dict(grad_checkpointing=True),  # cropped embeddings stay on for images (RO-ViT)
    generation=dict(method='beam', beam_size=3, max_len=30),
)
optim_wrapper = dict(optimizer=dict(lr=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=500),
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=0,
        end=max_epochs,
        eta_min=1e-6,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=512)
