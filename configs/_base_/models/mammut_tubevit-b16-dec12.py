# MaMMUT ViT-B/16 + 12-layer decoder extended to video with TubeViT sparse tubes (MaMMUT Sec. 3.3).
# The SAME ViT encodes images and clips; the tubes are initialised from its patch embedding.
_base_ = ['./mammut_vit-b16-dec12.py']
model = dict(
    data_preprocessor=dict(
        _delete_=True,  # ImgDataPreprocessor takes images only: this one takes images and clips
        type='VideoTextDataPreprocessor',
        mean=[122.771, 116.746, 104.094],  # CLIP's RGB mean x 255, as the image model
        std=[68.501, 66.632, 70.323],
        image_bgr_to_rgb=True,  # LoadImageFromFile reads BGR; decoded clips are RGB
    ),
    # TubeViT's tubes for 32 x 224 x 224 (paper Sec. 3.3) and 1x16x16 patches every 16 frames: 735 tokens.
    video_tokenizer=dict(type='SparseTubeTokenizer', tubes=None, frame_stride=16, gate_init=0.0),
    answer_max_len=5,  # MSRVTT-QA answers are single words (a few BPE tokens)
)
