# Tiny FIBER coarse-grained pretraining (ITC + ITM + MLM, FIBER Sec. 3.2) on Shapes World captions, on CPU.
# Validation: dual-encoder retrieval; test: the same plus ITM re-ranking of the top 16 (retrieval/itm_* keys).
_base_ = [
    '../_base_/datasets/shapes_world_caption.py',
    '../_base_/schedules/adamw_cosine_20e.py',
    '../_base_/default_runtime.py',
]
# 1,600 train images / 32 = 50 iterations an epoch -> 1,500 iterations, ~0.7 s each on 2 idle cores (~18 min).
max_epochs = 30
model = dict(
    type='FIBER',
    data_preprocessor=dict(
        type='ImgDataPreprocessor',
        mean=[123.675, 116.28, 103.53],  # ImageNet RGB statistics x 255 (Swin's)
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
    ),
    backbone=dict(
        type='FIBERBackbone',
        # Swin with 16 px patches on the 128 px images: 8 x 8 tokens (96 wide), then 4 x 4 (192 wide); window
        # 4. Shapes are 22-40 px, so each spans 2-3 patches (a 4 px patch stem costs ~4x more on CPU).
        image=dict(
            embed_dims=96,
            depths=(2, 2),
            num_heads=(3, 6),
            patch_size=16,
            strides=(16, 2),
            window_size=4,
            drop_path_rate=0.0,  # 4 blocks, 1,500 iterations: no stochastic depth
            out_indices=(1,),  # the pooled last stage is all the heads read
        ),
        # A small RoBERTa from scratch (vocab_size / pad_token_id come from the tokenizer, see FIBER).
        text=dict(
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
            max_position_embeddings=33,  # positions 1..32: RoBERTa counts from the padding id (0) + 1
            type_vocab_size=1,
            layer_norm_eps=1e-5,
        ),
        fusion_layers=2,  # the 2 blocks of stage 2 with the last 2 of 4 text layers (FIBER: 6 of 12)
    ),
    # The word-level Shapes World vocabulary (129 ids); the mask token is appended as id 129.
    tokenizer=dict(
        type='HFTokenizer',
        path='{{ fileDirname }}/../_base_/tokenizers/shapes_world.json',
        context_length=32,
    ),
    embed_dim=128,
    itc_loss=dict(type='InfoNCELoss', loss_weight=1.0),  # FIBER weighs its three losses equally
    itm_loss=dict(type='ITMLoss', loss_weight=1.0),
    mlm_loss=dict(
        type='MLMLoss', mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1, loss_weight=1.0
    ),
    temperature_init=0.07,  # ALBEF / FIBER
    # From scratch the gates start open: at FIBER's 0 they stayed < 0.1 after 600 iterations and ITM stayed at
    # its prior (accuracy 2/3, every pair "no match").
    fusion_gate_init=1.0,
)
optim_wrapper = dict(
    optimizer=dict(lr=1e-3),  # from scratch, batch 32 (as the tiny MaMMUT)
    paramwise_cfg=dict(custom_keys={'alpha': dict(decay_mult=0.0), 'logit_scale': dict(decay_mult=0.0)}),
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
# Re-ranking 16 candidates both ways scores ~19k image-caption pairs on the 200 test images (minutes on CPU).
test_evaluator = [dict(type='RetrievalMetric', rerank_k=16)]
