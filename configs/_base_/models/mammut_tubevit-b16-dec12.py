# MaMMUT ViT-B/16 + 12-layer decoder extended to video with TubeViT sparse tubes (MaMMUT Sec. 3.3): the image
# model of mammut_vit-b16-dec12.py plus a clip tokenizer. The SAME ViT encodes images and clips; the tubes are
# initialised from its patch embedding (also when an image-only checkpoint is loaded).
_base_ = ['./mammut_vit-b16-dec12.py']
model = dict(
    data_preprocessor=dict(
        _delete_=True,  # another type: ImgDataPreprocessor's arguments (bgr_to_rgb) do not apply
        type='VideoTextDataPreprocessor',  # images (C, H, W) and clips (C, T, H, W)
        mean=[122.771, 116.746, 104.094],  # CLIP's RGB mean x 255 (open_clip weights convert 1:1)
        std=[68.501, 66.632, 70.323],
        image_bgr_to_rgb=True,  # LoadImageFromFile reads BGR; decoded clips are RGB
    ),
    # Cropped positional embeddings (the image model's) apply to images; clips use the full ones.
    # TubeViT's tubes for 32 x 224 x 224 (paper Sec. 3.3) and 1x16x16 patches every 16 frames: 735 tokens.
    video_tokenizer=dict(type='SparseTubeTokenizer', tubes=None, frame_stride=16, gate_init=0.0),
    answer_max_len=5,  # MSRVTT-QA answers are single words (a few BPE tokens)
)
