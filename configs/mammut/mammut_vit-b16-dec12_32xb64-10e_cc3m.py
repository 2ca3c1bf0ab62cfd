# MaMMUT ViT-B/16 + 12-layer decoder pretrained on CC3M-style image-text pairs.
_base_ = [
    '../_base_/models/mammut_vit-b16-dec12.py',
    '../_base_/datasets/cc3m.py',
    '../_base_/schedules/adamw_cosine_20e.py',
    '../_base_/default_runtime.py',
]
max_epochs = 10  # ~3.3M pairs x 10 epochs at a 2,048 batch: ~16k iterations
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=2000),
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=0,
        end=max_epochs,
        eta_min=1e-6,
        convert_to_iter_based=True,
    ),
]
