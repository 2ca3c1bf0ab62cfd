# Tiny FIBER captioning on Shapes World, on CPU (FIBER Sec. 4.1): only the text attends to the image, with a
# causal text mask, and the LM head predicts the next token; greedy decoding, COCO caption metrics.
# Same backbone as the pretraining config: set load_from to its checkpoint to start from ITC + ITM + MLM.
_base_ = ['./fiber_swin-tiny-roberta-tiny_1xb32-30e_shapes-pretrain.py']
# 1,600 train images / 32 = 50 iterations an epoch -> 1,500 iterations, ~0.15 s each on 2 idle cores.
max_epochs = 30
model = dict(
    itc_loss=None,
    itm_loss=None,
    mlm_loss=None,
    caption_loss=dict(type='CaptionCrossEntropyLoss', label_smoothing=0.1, loss_weight=1.0),
    # No key/value cache: each step re-runs the backbone on the prefix, so beams cost their width in full.
    generation=dict(method='greedy', max_len=32),
)
# Unused here: the image-side cross-attention, the last Swin block and its output norm (fused text layer k
# reads the image tokens entering block k); distributed runs need find_unused_parameters=True.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=100),
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=0,
        end=max_epochs,
        eta_min=1e-5,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=10)
default_hooks = dict(checkpoint=dict(interval=10))
val_evaluator = [dict(type='CaptionMetric')]
test_evaluator = val_evaluator
