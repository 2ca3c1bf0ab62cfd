# Tiny MaMMUT open-vocabulary detector on Shapes World, on CPU: the ViT and text decoder pretrained by
# mammut_vit-tiny-dec4_1xb32-30e_shapes-ovd-pretrain.py (cropped positional embeddings), fine-tuned on the 40
# base categories (their boxes and names only), tested with all 48 names; AP/AP50 on base and the 8 novel.
_base_ = [
    '../_base_/models/mammut-det_vit-b16-dec12_sfp-rcnn.py',
    '../_base_/datasets/shapes_world_detection.py',
    '../_base_/schedules/adamw_cosine_20e.py',
    '../_base_/default_runtime.py',
]
max_epochs = 12  # 1,534 training images with a base shape / 16 = 96 iterations an epoch
det_size = 256  # images (128 px as generated) are up-sampled 2x: a 16 x 16 patch grid, 16 px patches
model = dict(
    vlm=dict(  # must equal the pretraining config's model
        image_encoder=dict(
            img_size=128,
            patch_size=16,
            patch_stem='conv',
            embed_dim=192,
            depth=4,
            num_heads=3,
            detection_grid=16,
        ),
        text_decoder=dict(width=192, depth=4, num_heads=3),
        tokenizer=dict(
            _delete_=True,  # the word-level Shapes World tokenizer replaces CLIP's BPE
            type='HFTokenizer',
            path='{{ fileDirname }}/../_base_/tokenizers/shapes_world.json',
            context_length=32,
        ),
        embed_dim=128,
    ),
    pretrained='work_dirs/mammut_ovd_pretrain/epoch_30.pth',
    templates=('a {}',),  # the captions' wording ("a red circle and two blue stars")
    # P3-P5 (strides 8, 16, 32) from the stride-16 ViT map: shapes span 35-96 px at 256 px.
    neck=dict(out_channels=64, scale_factors=(2.0, 1.0, 0.5), extra_pool=0),  # 64 channels, as tiny FIBER
    rpn_head=dict(
        in_channels=64,
        feat_channels=64,
        anchor_generator=dict(scales=[4], strides=[8, 16, 32]),  # 32, 64, 128 px anchors
    ),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64, featmap_strides=[8, 16, 32], finest_scale=32),
        # The tiny MaMMUT's name embeddings differ by little (same-colour names at cosine 0.97-0.999 even with
        # hard negative captions; colour spans the top 5 directions): whitened with the base names'
        # statistics, same-colour base names are at cosine 0.79 on average (eps = 1e-3 x the top eigenvalue).
        bbox_head=dict(in_channels=64, fc_out_channels=256, text_whitening=1e-3),
    ),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),  # 1-4 shapes an image
        rcnn=dict(
            sampler=dict(num=64)
        ),  # RoIs an image (a quarter positive): RoIAlign's CPU backward is slow
    ),
    test_cfg=dict(rpn=dict(max_per_img=100), rcnn=dict(max_per_img=100)),
)
meta_keys = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip', 'flip_direction', 'text',
             'custom_entities')  # fmt: skip
train_pipeline = [
    dict(type='LoadImageSafely'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=(det_size, det_size), ratio_range=(0.8, 1.2), keep_ratio=True),  # +-20 %
    dict(
        type='RandomCrop', crop_size=(det_size, det_size)
    ),  # a fixed 16 x 16 grid, as pretraining sees 8 x 8
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=(det_size, det_size)),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
test_pipeline = [
    dict(type='LoadImageSafely'),
    dict(type='Resize', scale=(det_size, det_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, weight_decay=0.05),  # new heads at 1e-3, batch 16
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.2)}),  # the pretrained ViT at 2e-4
)
param_scheduler = [  # a list replaces the base schedule whole
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=100),
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=0,
        end=max_epochs,
        eta_min=1e-5,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
auto_scale_lr = dict(base_batch_size=16)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs))
