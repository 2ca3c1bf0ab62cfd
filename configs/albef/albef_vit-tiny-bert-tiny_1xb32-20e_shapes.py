# Tiny ALBEF pretraining (ITC with momentum distillation + ITM with hard negatives + MLM, ALBEF Sec. 3) on
# Shapes World captions, on CPU. Validation: ITC retrieval; test: the same plus ITM re-ranking of the top 16.
_base_ = [
    '../_base_/datasets/shapes_world_caption.py',
    '../_base_/schedules/adamw_cosine_20e.py',
    '../_base_/default_runtime.py',
]
# 1,600 train images / 32 = 50 iterations an epoch -> 1,000 iterations (~30 min on one core: each step runs
# the online and momentum encoders and the fusion layers on up to 4B pairs).
max_epochs = 20
model = dict(
    type='ALBEF',
    data_preprocessor=dict(
        type='ImgDataPreprocessor',
        mean=[122.771, 116.746, 104.094],  # CLIP's RGB statistics x 255 (as the tiny MaMMUT)
        std=[68.501, 66.632, 70.323],
        bgr_to_rgb=True,
    ),
    # The tiny MaMMUT's ViT (8 x 8 tokens of 16 px on 128 px images, convolutional stem) with a class token,
    # which ALBEF's ITC reads; no cropped positional embeddings (a MaMMUT/RO-ViT device, not ALBEF's).
    image_encoder=dict(
        type='MaMMUTViT',
        img_size=128,
        patch_size=16,
        patch_stem='conv',
        embed_dim=192,
        depth=4,
        num_heads=3,
        class_token=True,
        final_pool='tok',
        cropped_pos_emb=False,
    ),
    # BERT from scratch: 2 text layers + 2 fusion layers (ALBEF: 6 + 6 of BERT-base).
    text_encoder=dict(
        hidden_size=192,
        num_layers=4,
        num_text_layers=2,
        num_heads=3,
        ffn_dim=768,
        max_positions=32,
        # BERT's 0.02 from scratch: the first token barely depends on the text, and ITC collapsed (every
        # image and caption feature the same direction, loss ln(keys), in a 40-step overfit of one batch as
        # in 3 epochs); 0.1 separates the captions from the start.
        init_std=0.1,
    ),
    # The word-level Shapes World vocabulary (129 ids); the mask token is appended as id 129.
    tokenizer=dict(
        type='HFTokenizer',
        path='{{ fileDirname }}/../_base_/tokenizers/shapes_world.json',
        context_length=32,
    ),
    embed_dim=128,
    # 16 batches of momentum features: ALBEF's 65,536 is ~4 % of its 14M-image epoch; 512 is 1/3 of ours,
    # so queued features are at most 16 steps stale.
    queue_size=512,
    # ALBEF's 0.995 (a ~200-step horizon) follows pretrained encoders; from scratch in 1,000 steps the
    # momentum model must keep up with a fast-changing online model: 0.99 (~100 steps, two epochs).
    momentum=0.99,
    alpha=0.4,  # ALBEF
    alpha_warmup_iters=50,  # ramped over the first epoch, as ALBEF
    temperature_init=0.07,
    itc_loss=dict(type='DistilledContrastiveLoss', loss_weight=1.0),  # ALBEF weighs its three losses equally
    itm_loss=dict(type='ITMLoss', loss_weight=1.0),
    mlm_loss=dict(
        type='MLMLoss', mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1, loss_weight=1.0
    ),
)
optim_wrapper = dict(
    optimizer=dict(lr=1e-3),  # from scratch, batch 32 (as the tiny MaMMUT and FIBER)
    # The temperature is a raw parameter (ALBEF): at lr 1e-3 it fell from 0.07 to 0.02 in 200 steps while ITC
    # had barely moved; lr_mult 0.1 gives it ALBEF's own rate (1e-4).
    paramwise_cfg=dict(custom_keys={'temp': dict(lr_mult=0.1, decay_mult=0.0)}),
)
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
train_cfg = dict(max_epochs=max_epochs, val_interval=10)
auto_scale_lr = dict(base_batch_size=32)
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=10))
val_evaluator = [dict(type='RetrievalMetric')]
# Re-ranking 16 candidates both ways scores ~19k image-caption pairs on the 200 test images.
test_evaluator = [dict(type='RetrievalMetric', rerank_k=16)]
