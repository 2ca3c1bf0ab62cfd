# FIBER's detection fine-tuning schedule (microsoft/FIBER e2e_dyhead_SwinT_B_FPN_*_finetuning_*.yaml):
# AdamW, lr 1e-5 for image, text and head (BASE_LR = LANG_LR), weight decay 1e-4, no gradient clipping,
# 2000 warm-up iterations from 1e-3 x lr, x0.1 at 67 % and 89 % of 24 epochs, EMA 0.999 of the weights.
# FIBER trains with AMP (USE_AMP): run tools/train.py --amp.
max_epochs = 24
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-5, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=2000),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs, milestones=[16, 21], gamma=0.1),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=32)  # SOLVER.IMS_PER_BATCH
