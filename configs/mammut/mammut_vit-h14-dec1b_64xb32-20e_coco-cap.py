# MaMMUT ViT-H/14 + "1B" text decoder on COCO Captions at 224 px.
# Decoder: width 2048, 16 layers, 8 with cross-attention: ~0.8B in the layers + 0.1B token embeddings
# (MaMMUT scales the decoder to ~1B; paper Sec. 4).
_base_ = ['./mammut_vit-b16-dec12_32xb64-20e_coco-cap.py']
model = dict(
    image_encoder=dict(
        patch_size=14, embed_dim=1280, depth=32, num_heads=16, detection_grid=73, drop_path_rate=0.1
    ),
    text_decoder=dict(width=2048, depth=16, num_heads=16, grad_checkpointing=True),
    embed_dim=1024,
)
train_dataloader = dict(batch_size=32)  # 64 GPUs x 32 = 2048 global, as the base config
