# FIBER-B coarse-grained pretraining with FSDP (MMEngine's FSDPStrategy; tools/train.py builds a
# FlexibleRunner for any config with `strategy`, see toolkit/distributed.py). Same model, data, batch and
# schedule as the DDP config; ~240M parameters fit DDP too, so this trades communication for memory (room for
# larger per-GPU batches or a larger backbone).
# Mixed precision is FSDP's own (below): do not add --amp, which would autocast on top of it.
_base_ = ['./fiber_swin-b-roberta-base_64xb64-100k_coco-cc3m-coarse-pretrain.py']
model = dict(backbone=dict(with_cp=True))  # as the base: every Swin block and RoBERTa layer recomputed
# ITM re-ranking runs the model in the metric, on the main process only; FSDP needs every process for each
# forward. Re-rank with tools/test.py and the DDP config on the checkpoint (full weights, the DDP layout).
test_evaluator = [dict(type='RetrievalMetric')]
strategy = dict(
    type='FSDPStrategy',  # toolkit.distributed runs it as ToolkitFSDPStrategy (scalar parameters, clipping)
    model_wrapper=dict(
        # FIBER's backbone runs the parts of the mmdet Swin blocks and RoBERTa layers itself (it inserts the
        # cross-attention between them), so the FSDP units are those parts, each run through its forward:
        # window attention, FFN, patch merging, the gated cross-attention and RoBERTa's FFN halves. RoBERTa's
        # self-attention projections and the embeddings stay in the (unsharded) root unit.
        auto_wrap_policy=dict(
            type='toolkit.distributed.block_wrap_policy',
            block_names=[
                'ShiftWindowMSA',
                'FFN',
                'PatchMerging',
                'GatedCrossAttention',
                'RobertaIntermediate',
                'RobertaOutput',
            ],
        ),
        sharding_strategy='FULL_SHARD',
        # FIBER trains with AMP; bfloat16 weights in the all-gathers and the compute, float32 reductions.
        mixed_precision=dict(param_dtype='bfloat16', reduce_dtype='float32', buffer_dtype='float32'),
        limit_all_gathers=True,
        use_orig_params=True,  # the lr_mult groups (paramwise_cfg) see the original parameters
    ),
)
