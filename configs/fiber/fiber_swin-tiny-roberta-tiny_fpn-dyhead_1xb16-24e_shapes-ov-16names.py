# Ablation of the training prompt: 16 names a prompt (the image's own, then random negatives, shuffled), as
# GLIP samples negative categories, in place of all 40 base names. It fits the base categories less well and
# generalises less to the novel ones (docs/fiber.md).
_base_ = './fiber_swin-tiny-roberta-tiny_fpn-dyhead_1xb16-24e_shapes-ov.py'
train_dataloader = dict(
    dataset=dict(
        pipeline=[
            dict(type='LoadImageSafely'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='RandomResize', scale=(128, 128), ratio_range=(0.8, 1.2), keep_ratio=True),
            dict(type='RandomFlip', prob=0.5),
            dict(type='SampleGroundingNames', max_names=16, shuffle=True),
            dict(type='PackDetInputs', meta_keys={{_base_.meta_keys}}),
        ]
    )
)
