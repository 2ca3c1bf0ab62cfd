# BEiT-3 base as a dual encoder (Sec. 3.2, Fig. 3b): image-text contrastive fine-tune on COCO captions,
# evaluated with Recall@K.
_base_ = [
    '../_base_/models/beit3_base-patch16-224.py',
    '../_base_/datasets/coco_caption.py',
    '../_base_/default_runtime.py',
]
# The MDM checkpoint of `tools/dist_train.sh
# configs/beit3/beit3_base-patch16-224-spm64k_64xb96-1m_cc3m-mdm.py 64 --work-dir work_dirs/beit3_base_mdm`
# (its MDM heads are left out).
load_from = 'work_dirs/beit3_base_mdm/iter_1000000.pth'
max_epochs = 15  # unilm/beit3 COCO retrieval recipe (base)
model = dict(
    mdm_loss=None,
    visual_target=None,
    contrastive_loss=dict(type='InfoNCELoss', loss_weight=1.0),
    embed_dim=None,  # retrieval heads D -> D without bias (unilm/beit3 BEiT3ForRetrieval)
    temperature_init=0.07,
    backbone=dict(drop_path_rate=0.2),  # unilm/beit3 COCO retrieval recipe (base)
)
# 224 px as pretraining (BEiT-3 fine-tunes retrieval at 384 px; that needs interpolated position embeddings).
train_dataloader = dict(batch_size=192)  # per GPU; 16 GPUs x 192 = 3072 (unilm/beit3 COCO retrieval, base)
optim_wrapper = dict(
    type='OptimWrapper',
    # unilm/beit3 COCO retrieval (base): lr 2e-4, weight decay 0.05, AdamW (0.9, 0.999), eps 1e-8. Its
    # layer-wise lr decay 0.65 is not implemented here.
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            'cls_token': dict(decay_mult=0.0),
            'mask_token': dict(decay_mult=0.0),
            'logit_scale': dict(decay_mult=0.0),
        },
    ),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=3, convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=3,  # 3 warm-up epochs (unilm/beit3 COCO retrieval, base)
        end=max_epochs,
        eta_min=1e-6,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=3072)
val_evaluator = [dict(type='RetrievalMetric')]
test_evaluator = val_evaluator
