# openMaMMUT ViT-B-32 (LAION-AI/open_clip_mammut `mammut_ViT-B-32`) as our MaMMUT, for weights converted by
# tools/model_converters/openmammut_to_toolkit.py; evaluated on COCO Captions (retrieval + captioning).
# The switches reproduce the fork's forward pass (see pretrain/models/openmammut_converters.py).
_base_ = ['./mammut_vit-b16-dec12_32xb64-20e_coco-cap.py']
img_size = 224  # the fork's vision_cfg.image_size
# open_clip's eval transform: PIL decode, bicubic short-edge resize, centre crop (mean/std: preprocessor)
test_pipeline = [
    dict(type='LoadImageSafely', imdecode_backend='pillow'),
    dict(type='ResizeShortEdgeCenterCrop', size=img_size, interpolation='bicubic'),
    dict(type='PackImageTextInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(
    # data_preprocessor: the base's OpenAI mean/std x 255 (open_clip's OPENAI_DATASET_MEAN/STD), RGB
    image_encoder=dict(
        img_size=img_size,
        patch_size=32,
        embed_dim=768,
        depth=12,
        num_heads=12,  # width 768 / head_width 64
        class_token=True,
        pre_norm=True,  # ln_pre
        final_norm=False,  # ln_post is applied after the pool (pool_norm)
        keep_prefix_tokens=True,  # pool_type='avg_all': the class token is pooled and cross-attended too
        patch_bias=False,
        cropped_pos_emb=False,
        detection_grid=None,
    ),
    text_decoder=dict(
        width=512,
        depth=12,
        num_heads=8,
        context_length=77,
        cross_attn_layers=[0, 2, 4, 6, 8, 10],  # cross_attn_ratio=2: after self-attention blocks 0, 2, ...
        cross_attn_mlp=True,  # each cross-attention has its own MLP
        cross_layer_self_mlp=False,  # has_mlp=false in mammut_ViT-B-32.json
        contrastive_pool='mean_all',  # mean over all 77 positions, padding included
        tie_embeddings=False,  # text_projection is the captioning head
    ),
    tokenizer=dict(type='CLIPBPETokenizer', context_length=77),  # open_clip's SimpleTokenizer, 77 tokens
    embed_dim=512,
    pool='avg',
    pool_norm=True,
    img_ctx_proj='linear_no_bias',  # map_viz2txt_kv
    txt_proj=False,  # the text embedding is the pooled decoder output (width == embed_dim)
    contrastive_loss=dict(_delete_=True, type='InfoNCELoss'),  # the fork trains with CoCaLoss (softmax)
    caption_loss=dict(label_smoothing=0.0),  # CoCaLoss: plain cross-entropy
)
