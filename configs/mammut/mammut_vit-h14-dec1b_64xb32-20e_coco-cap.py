# MaMMUT ViT-H/14 + "1B" text decoder on COCO Captions at 224 px.
# Decoder: width 2048, 16 layers, 8 with cross-attention: ~0.8B in the layers + 0.1B token embeddings
# (MaMMUT scales the decoder to ~1B; paper Sec. 4).
_base_ = ['./mammut_vit-b16-dec12_32xb64-20e_coco-cap.py']
model = dict(
    image_encoder=dict(
        patch_size=14,
        embed_dim=1280,
        depth=32,
        num_heads=16,
        detection_grid=73,
        drop_path_rate=0.1,
        # Recompute blocks in the backward pass: only each block's input is kept (ViT-B/16 at batch 8: 1.28 GB
        # -> 0.07 GB saved for backward; tests/pretrain/test_grad_checkpointing.py), for one more forward.
        grad_checkpointing=True,
    ),
    text_decoder=dict(width=2048, depth=16, num_heads=16, grad_checkpointing=True),
    embed_dim=1024,
)
# Mixed precision: `tools/train.py CONFIG --amp` (AmpOptimWrapper on CUDA: float16 autocast with dynamic loss
# scaling; add `--cfg-options optim_wrapper.dtype=bfloat16` for bfloat16 on Ampere or newer GPUs).
# Sharded over the GPUs instead of replicated: the _fsdp.py variant of this config.
train_dataloader = dict(batch_size=32)  # 64 GPUs x 32 = 2048 global, as the base config
