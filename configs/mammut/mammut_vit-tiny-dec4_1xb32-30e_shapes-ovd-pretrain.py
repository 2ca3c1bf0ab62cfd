# Tiny MaMMUT pretrained on Shapes World captions for the open-vocabulary detector (the CPE arm of the
# ablation; ..._shapes-ovd-pretrain_no-cpe.py is the other). The captioning demo's model and schedule, plus:
# - the cropped positional embeddings are up-sampled to the 16 x 16 grid the detector sees (256 px detection
#   input / 16 px patches; pretraining sees 8 x 8 tokens at 128 px), as RO-ViT does;
# - one hard negative caption per image (a colour or shape word swapped, NegCLIP): without them the text
#   embedding of a name like "a green star" encodes its colour only (after 20 epochs, every name had a
#   same-colour name at cosine > 0.999), which leaves a detector nothing to tell shapes apart by.
_base_ = ['./mammut_vit-tiny-dec4_1xb32-30e_shapes-cap.py']
model = dict(image_encoder=dict(cropped_pos_emb=True, detection_grid=16))
img_size = 128
train_pipeline = [
    dict(type='LoadImageSafely'),
    dict(type='Resize', scale=(img_size, img_size), keep_ratio=False),
    dict(type='SampleCaption'),
    dict(type='RandomFlipCaption', prob=0.5),
    dict(
        type='SwapWordNegative',
        groups=[
            ['circle', 'square', 'triangle', 'star', 'hexagon', 'cross'],
            ['circles', 'squares', 'triangles', 'stars', 'hexagons', 'crosses'],
            ['red', 'green', 'blue', 'yellow', 'purple', 'orange', 'white', 'black'],
        ],
    ),
    dict(type='PackImageTextInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
