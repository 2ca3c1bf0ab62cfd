# MaMMUT ViT-L/14 + 12-layer base decoder on COCO Captions at 224 px.
_base_ = ['./mammut_vit-b16-dec12_32xb64-20e_coco-cap.py']
model = dict(
    image_encoder=dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16, detection_grid=73),  # 1024/14
    text_decoder=dict(width=1024, num_heads=16),
    embed_dim=1024,
)
