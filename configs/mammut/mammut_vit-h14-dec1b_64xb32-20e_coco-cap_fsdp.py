# MaMMUT ViT-H/14 + "1B" decoder with FSDP (MMEngine's FSDPStrategy; tools/train.py builds a FlexibleRunner
# for any config with `strategy`, see toolkit/distributed.py). Same model, data, batch and schedule as the DDP
# config. 1.68B parameters: float32 weights + gradients + AdamW moments are ~27 GB on every GPU under DDP,
# ~0.42 GB per GPU sharded over 64 (plus the unsharded root: token embeddings and the cross-attention layers).
# Launch: tools/dist_train.sh configs/mammut/mammut_vit-h14-dec1b_64xb32-20e_coco-cap_fsdp.py 8 (per node).
# Mixed precision is FSDP's own (below): do not add --amp, which would autocast on top of it.
_base_ = ['./mammut_vit-h14-dec1b_64xb32-20e_coco-cap.py']
model = dict(
    # Recompute every ViT block and decoder layer in the backward pass (the base sets the decoder's): only
    # each block's input is kept (ViT-B/16 at batch 8: 1.28 GB -> 0.07 GB saved for the backward pass, peak
    # 1.17 -> 0.50 GB; see tests/pretrain/test_grad_checkpointing.py), for one more forward pass of compute.
    image_encoder=dict(grad_checkpointing=True),
    text_decoder=dict(grad_checkpointing=True),
    # Captioning stops when every caption of a batch has ended, after a different number of decoder calls on
    # each process, but FSDP needs the same calls on all of them: evaluate retrieval here, and captions with
    # tools/test.py and the DDP config on the checkpoint (full weights, the DDP layout).
    generation=dict(method='none'),
)
val_evaluator = [dict(type='RetrievalMetric')]
test_evaluator = val_evaluator
strategy = dict(
    type='FSDPStrategy',  # toolkit.distributed runs it as ToolkitFSDPStrategy (scalar parameters, clipping)
    model_wrapper=dict(
        # One FSDP unit per ViT block and per decoder self-attention and MLP: whole decoder blocks cannot be
        # units, the decoder projects the image keys / values of their cross-attention outside their forward.
        auto_wrap_policy=dict(
            type='toolkit.distributed.block_wrap_policy', block_names=['ViTBlock', 'SelfAttention', 'Mlp']
        ),
        sharding_strategy='FULL_SHARD',  # ZeRO-3: parameters, gradients and optimizer state sharded
        # bfloat16 weights in the all-gathers and the compute; gradients reduced and AdamW run in float32.
        mixed_precision=dict(param_dtype='bfloat16', reduce_dtype='float32', buffer_dtype='float32'),
        limit_all_gathers=True,  # bounds the memory of prefetched all-gathers
        use_orig_params=True,  # per-parameter optimizer groups (paramwise_cfg) see the original parameters
    ),
)
