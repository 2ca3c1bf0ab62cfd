# MaMMUT with a ViT-B/16 image encoder and a 12-layer "base" text decoder (MaMMUT, Kuo et al. 2023, Sec. 3).
model = dict(
    type='MaMMUT',
    data_preprocessor=dict(
        type='ImgDataPreprocessor',
        mean=[122.771, 116.746, 104.094],  # CLIP's RGB mean x 255 (open_clip weights convert 1:1)
        std=[68.501, 66.632, 70.323],
        bgr_to_rgb=True,
    ),
    image_encoder=dict(
        type='MaMMUTViT',
        img_size=224,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        cropped_pos_emb=True,  # RO-ViT cropped positional embeddings
        detection_grid=64,  # 1024 px detection input / 16 px patches (RO-ViT Sec. 3.1)
        crop_scale=(0.1, 1.0),  # RO-ViT: area fraction of the random crop
        crop_ratio=(0.5, 2.0),  # RO-ViT: aspect ratio range
    ),
    text_decoder=dict(
        type='MaMMUTTextDecoder',
        width=768,
        depth=12,
        num_heads=12,
        cross_attn_layers='every_other',  # cross-attention in 6 of 12 layers (M ~ N/2, paper Sec. 3.1)
    ),
    tokenizer=dict(type='CLIPBPETokenizer', context_length=64),
    embed_dim=768,
    pool='avg',
    contrastive_loss=dict(type='FocalContrastiveLoss', alpha=None, gamma=1.0, loss_weight=1.0),
    caption_loss=dict(type='CaptionCrossEntropyLoss', label_smoothing=0.1, loss_weight=1.0),  # equal weights
    generation=dict(method='beam', beam_size=3, max_len=30),
)
