# ALBEF ViT-B/16 + BERT-base fine-tuned for COCO image-text retrieval at 384 px (Li et al., NeurIPS 2021,
# Sec. 5.2; salesforce/ALBEF configs/Retrieval_coco.yaml): the released `mscoco.pth` (from the 14M-image
# pretrained ALBEF.pth) loads into this config strictly after
#   python tools/model_converters/albef_to_toolkit.py mscoco.pth data/pretrained/albef/mscoco.safetensors
# and is evaluated with `tools/test.py CONFIG data/pretrained/albef/mscoco.safetensors`. Parity with the
# official model class: tests/pretrain/test_albef_official_parity.py. `load_from` starts fine-tuning
# instead from the pretrained 14M checkpoint, converted with `--img-size 384 --drop-mlm-head` (its
# 16 x 16 position grid resized to 24 x 24 bicubically, as ALBEF's Retrieval.py does).
# Needs the bert-base-uncased tokenizer.json (no BERT weights: they come from the checkpoint).
_base_ = [
    '../_base_/models/albef_vit-b16-bert-base.py',
    '../_base_/datasets/coco_caption.py',
    '../_base_/default_runtime.py',
]
img_size = 384  # Retrieval_coco.yaml image_res
max_epochs = 5  # Retrieval_coco.yaml
load_from = 'data/pretrained/albef/ALBEF_384.safetensors'  # converted ALBEF.pth (see above)
model = dict(
    image_encoder=dict(img_size=img_size),
    with_mlm=False,  # models/model_retrieval.py: ITC + ITM, no MLM head
    queue_size=65536,  # Retrieval_coco.yaml: the released checkpoint's queues load as they are
    alpha_warmup_iters=0,  # Retrieval.py ramps alpha over the first epoch only when warm_up; set per run
    itm_eval_batch_size=128,
)
# ALBEF's test transform: Resize((384, 384), BICUBIC) by PIL, ToTensor, Normalize; captions pre_caption(30).
test_pipeline = [
    dict(type='LoadImageSafely'),
    dict(
        type='Resize', scale=(img_size, img_size), keep_ratio=False, backend='pillow', interpolation='bicubic'
    ),
    dict(type='CleanCaption', max_words=30),
    dict(type='PackImageTextInputs'),
]
# ALBEF trains with RandomResizedCrop(384, scale=(0.5, 1)), flip and RandAugment; here resize and flip only.
train_pipeline = [
    dict(type='LoadImageSafely'),
    dict(
        type='Resize', scale=(img_size, img_size), keep_ratio=False, backend='pillow', interpolation='bicubic'
    ),
    dict(type='RandomFlip', prob=0.5),
    dict(type='SampleCaption'),
    dict(type='CleanCaption', max_words=30),
    dict(type='PackImageTextInputs'),
]
# ALBEF evaluates on the Karpathy 5k test split; the base points at captions_val2017 (set ann_file for
# the Karpathy split).
train_dataloader = dict(batch_size=32, dataset=dict(pipeline=train_pipeline))  # 8 GPUs x 32 (Retrieval_coco)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [dict(type='RetrievalMetric')]
test_evaluator = [dict(type='RetrievalMetric', rerank_k=256)]  # Retrieval_coco.yaml k_test 256
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-5, weight_decay=0.02),  # Retrieval_coco.yaml
    paramwise_cfg=dict(custom_keys={'temp': dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min=1e-6)  # min_lr 1e-6
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=256)
