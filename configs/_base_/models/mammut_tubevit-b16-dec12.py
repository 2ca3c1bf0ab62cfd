# MaMMUT ViT-B/16 + 12-layer decoder extended to video with TubeViT sparse tubes (MaMMUT Sec. 3.3): the image
# model of mammut_vit-b16-dec12.py plus a clip tokenizer. The SAME ViT encodes images and clips; the tubes are
# initialised from its patch embedding (also when an image-only checkpoint is loaded).
model = dict(
    type='MaMMUT',
    data_preprocessor=dict(
        type='VideoTextDataPreprocessor',  # images (C, H, W) and clips (C, T, H, W)
        mean=[122.771, 116.746, 104.094],  # CLIP's RGB mean x 255 (open_clip weights convert 1:1)
        std=[68.501, 66.632, 70.323],
        image_bgr_to_rgb=True,  # LoadImageFromFile reads BGR; decoded clips are RGB
    ),
    image_encoder=dict(
        type='MaMMUTViT',
        img_size=224,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        cropped_pos_emb=True,  # RO-ViT cropped positional embeddings (images; clips use the full ones)
        detection_grid=64,  # 1024 px detection input / 16 px patches (RO-ViT Sec. 3.1)
        crop_scale=(0.1, 1.0),  # RO-ViT: area fraction of the random crop
        crop_ratio=(0.5, 2.0),  # RO-ViT: aspect ratio range
    ),
    # TubeViT's tubes for 32 x 224 x 224 (paper Sec. 3.3) and 1x16x16 patches every 16 frames: 735 tokens.
    video_tokenizer=dict(type='SparseTubeTokenizer', tubes=None, frame_stride=16, gate_init=0.0),
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
    answer_max_len=5,  # MSRVTT-QA answers are single words (a few BPE tokens)
)
