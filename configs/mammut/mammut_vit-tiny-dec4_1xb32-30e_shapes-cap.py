# Tiny MaMMUT for Shapes World on CPU: the `make demo` job (a few minutes on 2 cores).
_base_ = [
    '../_base_/models/mammut_vit-b16-dec12.py',
    '../_base_/datasets/shapes_world_caption.py',
    '../_base_/schedules/adamw_cosine_20e.py',
    '../_base_/default_runtime.py',
]
max_epochs = 30  # 1,600 train images / 32 = 50 iterations an epoch -> 1,500 iterations
model = dict(
    image_encoder=dict(
        img_size=128,
        patch_size=16,  # 8 x 8 = 64 image tokens, each a full-resolution 16 px patch
        # A convolutional stem learns shapes from 1,600 images faster than a linear patch embedding:
        # at equal training time (~14 min) test i2t R@5 0.66 -> 0.85 and CIDEr 1.62 -> 1.77.
        patch_stem='conv',
        embed_dim=192,
        depth=4,
        num_heads=3,
        detection_grid=32,  # a 512 px detection input / 16 px patches
    ),
    text_decoder=dict(width=192, depth=4, num_heads=3),  # cross-attention in 2 of 4 layers
    # The word-level Shapes World vocabulary (fixed by the generator's templates; a test checks it matches).
    tokenizer=dict(
        _delete_=True,  # replaces the CLIP BPE tokenizer of the base model
        type='HFTokenizer',
        path='{{ fileDirname }}/../_base_/tokenizers/shapes_world.json',
        context_length=32,
    ),
    embed_dim=128,
    generation=dict(method='beam', beam_size=3, max_len=32),
)
optim_wrapper = dict(optimizer=dict(lr=1e-3))  # small model, batch 32
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
auto_scale_lr = dict(base_batch_size=32)
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(interval=10),
)
