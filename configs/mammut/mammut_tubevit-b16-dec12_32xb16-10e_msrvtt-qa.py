# MaMMUT ViT-B/16 fine-tuned for open-ended MSRVTT-QA (MaMMUT Sec. 4.4): the question is the decoder's prefix
# and the answer is generated; accuracy is exact match after answer normalisation.
_base_ = [
    '../_base_/models/mammut_tubevit-b16-dec12.py',
    '../_base_/datasets/msrvtt_qa.py',
    '../_base_/schedules/adamw_cosine_20e.py',
    '../_base_/default_runtime.py',
]
load_from = 'work_dirs/mammut_vit-b16-dec12_32xb64-20e_coco-cap/epoch_20.pth'  # our COCO image model
max_epochs = 10  # 158k training questions
model = dict(image_encoder=dict(cropped_pos_emb=False, grad_checkpointing=True))
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
