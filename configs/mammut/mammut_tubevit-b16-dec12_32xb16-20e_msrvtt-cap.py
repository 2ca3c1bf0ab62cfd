# MaMMUT ViT-B/16 + 12-layer decoder fine-tuned for MSR-VTT video captioning (MaMMUT Sec. 4.4) from the
# image-pretrained COCO model: the ViT, decoder and heads load as they are, the tubes are initialised from the
# loaded patch embedding and the fixed-embedding gate starts closed.
_base_ = [
    '../_base_/models/mammut_tubevit-b16-dec12.py',
    '../_base_/datasets/msrvtt_caption.py',
    '../_base_/schedules/adamw_cosine_20e.py',
    '../_base_/default_runtime.py',
]
load_from = 'work_dirs/mammut_vit-b16-dec12_32xb64-20e_coco-cap/epoch_20.pth'  # our COCO image model
model = dict(
    image_encoder=dict(cropped_pos_emb=False, grad_checkpointing=True),  # 735 tokens a clip
    generation=dict(method='beam', beam_size=3, max_len=30),
)
optim_wrapper = dict(optimizer=dict(lr=1e-4))  # fine-tuning: 5x below pretraining
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=20, eta_min=1e-6, convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=512)  # 32 GPUs x 16 clips
