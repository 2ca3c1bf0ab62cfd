# MaMMUT ViT-B/16 fine-tuned for MSR-VTT text-video retrieval (9k train / 1k-A test) through the contrastive
# pass; the captioning pass keeps training (the paper trains both) but is not evaluated here.
_base_ = [
    '../_base_/models/mammut_tubevit-b16-dec12.py',
    '../_base_/datasets/msrvtt_retrieval.py',
    '../_base_/schedules/adamw_cosine_20e.py',
    '../_base_/default_runtime.py',
]
load_from = 'work_dirs/mammut_vit-b16-dec12_32xb64-20e_coco-cap/epoch_20.pth'  # our COCO image model
model = dict(
    image_encoder=dict(cropped_pos_emb=False, grad_checkpointing=True),
    generation=dict(method='none'),  # retrieval only: skip captioning at evaluation
)
optim_wrapper = dict(optimizer=dict(lr=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=20, eta_min=1e-6, convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=512)
