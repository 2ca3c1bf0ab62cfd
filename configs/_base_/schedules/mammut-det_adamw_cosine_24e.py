# The MaMMUT detector's paper-scale schedule (RO-ViT Sec. 4.1): AdamW at 2e-4 for a global batch of 128
# (32 GPUs x 4), weight decay 0.1, the pretrained ViT at half the rate, 1,000 warm-up iterations, cosine
# decay to 0 over 24 epochs.
_base_ = ['./adamw_cosine_20e.py']
max_epochs = 24
optim_wrapper = dict(
    optimizer=dict(lr=2e-4, weight_decay=0.1),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.5)}),
)
param_scheduler = [  # a list replaces the base schedule whole
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=1000),
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=0,
        end=max_epochs,
        eta_min=0.0,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
auto_scale_lr = dict(base_batch_size=128)
