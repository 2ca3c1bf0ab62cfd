# MaMMUT ViT-L/14 + 12-layer base decoder on COCO Captions at 224 px.
_base_ = ['./mammut_vit-b16-dec12_32xb64-20e_coco-cap.py']
model = dict(
    # detection_grid: 1024 px / 14. grad_checkpointing=True recomputes the blocks in the backward pass (less
    # activation memory for ~1 more forward pass); off here, on in the ViT-H/14 config.
    image_encoder=dict(
        patch_size=14, embed_dim=1024, depth=24, num_heads=16, detection_grid=73, grad_checkpointing=False
    ),
    text_decoder=dict(width=1024, num_heads=16, grad_checkpointing=False),
    embed_dim=1024,
)
# Mixed precision: `tools/train.py CONFIG --amp` (AmpOptimWrapper on CUDA: float16 autocast with dynamic loss
# scaling; add `--cfg-options optim_wrapper.dtype=bfloat16` for bfloat16 on Ampere or newer GPUs).
