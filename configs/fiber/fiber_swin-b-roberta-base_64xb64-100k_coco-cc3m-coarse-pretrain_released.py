# FIBER-B coarse-grained pretraining model with the released weights (microsoft/FIBER fiber_pretrain.ckpt,
# 4M images, Swin-B 384 + RoBERTa-base, K = 6), converted once with
#   python tools/model_converters/fiber_to_toolkit.py fiber_pretrain.ckpt \
#       data/pretrained/fiber-b_coarse-pretrain_backbone.safetensors
# The backbone matches the official one exactly (tests/pretrain/test_fiber_official_parity.py); FIBER's heads
# (ITC/ITM transforms and tanh poolers, MLM head) differ in layout from ours and are not converted: img_proj,
# txt_proj, itm_head and lm_head start from their initialisation (fine-tune them before use).
_base_ = './fiber_swin-b-roberta-base_64xb64-100k_coco-cc3m-coarse-pretrain.py'
fiber_backbone = 'data/pretrained/fiber-b_coarse-pretrain_backbone.safetensors'
model = dict(
    backbone=dict(
        image=dict(convert_weights=False, init_cfg=None),  # all weights come from the converted file
        text=None,  # RoBERTa-base shapes (the preset); the converted file holds its weights
        image_query_norm=True,  # FIBER coarse's norm_i2t_i on the image-side cross-attention query
        unshifted_stages=(3,),  # official Swin: the 12 x 12 last stage is one window, never shifted
        fused_text_last_norm=False,  # FIBER's infer skips the last RoBERTa LayerNorm in fused passes
        init_cfg=dict(type='Pretrained', checkpoint=fiber_backbone),
    ),
)
# FIBER's val transform (albef_transform): PIL decode, PIL bicubic resize to 384 x 384, ImageNet normalisation
# (the data preprocessor of the base). Within 1/255 of the official pixels on tests/fixtures/fiber/.
test_pipeline = [
    dict(type='LoadImageSafely', imdecode_backend='pillow'),
    dict(type='Resize', scale=(384, 384), keep_ratio=False, backend='pillow', interpolation='bicubic'),
    dict(type='PackImageTextInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
