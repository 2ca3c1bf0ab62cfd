# Tiny BEiT-3 as a dual encoder (BEiT-3 Sec. 3.2, Fig. 3b): image-text contrastive fine-tune of the MDM model,
# evaluated with Recall@K on Shapes World captions.
_base_ = ['./beit3_tiny-patch16-128_1xb32-12e_shapes-mdm.py']
# The checkpoint of `tools/train.py configs/beit3/beit3_tiny-patch16-128_1xb32-12e_shapes-mdm.py
# --work-dir work_dirs/beit3_mdm` (its MDM heads are left out: unexpected keys are ignored).
load_from = 'work_dirs/beit3_mdm/epoch_12.pth'
# 50 iterations an epoch -> 500 iterations, 0.9-1.8 s each on one thread (8-14 min).
max_epochs = 10
model = dict(
    mdm_loss=None,
    visual_target=None,
    contrastive_loss=dict(type='InfoNCELoss', loss_weight=1.0),
    embed_dim=None,  # BEiT-3's retrieval heads keep the width (D -> D, no bias)
    temperature_init=0.07,  # CLIP / BEiT-3 retrieval
)
optim_wrapper = dict(
    optimizer=dict(lr=5e-4),  # fine-tuning a pretrained backbone at batch 32: half the pretraining rate
    paramwise_cfg=dict(
        custom_keys={
            'cls_token': dict(decay_mult=0.0),
            'mask_token': dict(decay_mult=0.0),
            'logit_scale': dict(decay_mult=0.0),
        }
    ),
)
param_scheduler = [
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
default_hooks = dict(checkpoint=dict(interval=5))
