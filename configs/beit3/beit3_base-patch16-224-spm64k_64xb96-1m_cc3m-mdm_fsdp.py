# BEiT-3 base MDM pretraining with FSDP (MMEngine's FSDPStrategy; tools/train.py builds a FlexibleRunner for
# any config with `strategy`, see toolkit/distributed.py). Same model, data, batch and schedule as the DDP
# config; the recipe of the larger BEiT-3 sizes (BEiT-3 large / giant train with FSDP-style sharding).
# Mixed precision is FSDP's own (below): do not add --amp, which would autocast on top of it.
_base_ = ['./beit3_base-patch16-224-spm64k_64xb96-1m_cc3m-mdm.py']
# 96 pairs per GPU go through up to three backbone passes (image, text, pair groups): recompute every layer.
model = dict(backbone=dict(grad_checkpointing=True))
strategy = dict(
    type='FSDPStrategy',  # toolkit.distributed runs it as ToolkitFSDPStrategy (scalar parameters, clipping)
    model_wrapper=dict(
        # One FSDP unit per Multiway layer; the frozen VQ-KD tokenizer stays in the root unit (replicated).
        # Every process must run the same units in the same order: BEiT-3's group sizes follow from the batch
        # size alone, so every process makes the same passes.
        auto_wrap_policy=dict(type='toolkit.distributed.block_wrap_policy', block_names=['MultiwayLayer']),
        sharding_strategy='FULL_SHARD',
        mixed_precision=dict(param_dtype='bfloat16', reduce_dtype='float32', buffer_dtype='float32'),
        limit_all_gathers=True,
        use_orig_params=True,  # mixed frozen / trained parameters in the root unit and paramwise_cfg groups
    ),
)
