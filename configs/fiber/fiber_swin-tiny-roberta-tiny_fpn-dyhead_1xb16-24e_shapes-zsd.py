# The zero-shot detection protocol (Bansal et al., ECCV 2018, Sec. 4) on Shapes World: training keeps only
# the images without any novel shape, so novel objects are never seen, not even as background. The
# open-vocabulary protocol of the default config (OV-COCO's) keeps those images and their novel shapes
# become unlabeled background, which the detector learns to suppress. Same model and schedule, 16-name prompts
# (the ablation it was run against); the test is the same (all 48 names, AP on base and on novel).
_base_ = './fiber_swin-tiny-roberta-tiny_fpn-dyhead_1xb16-24e_shapes-ov-16names.py'
train_dataloader = dict(
    dataset=dict(
        ann_file='annotations/instances_train.json',  # all boxes; images with a novel one are dropped
        drop_images_outside_vocabulary=True,
    )
)
