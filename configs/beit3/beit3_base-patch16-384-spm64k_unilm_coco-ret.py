# BEiT-3 base dual encoder at 384 px with the released unilm/beit3 COCO retrieval weights
# (beit3_base_patch16_384_coco_retrieval: TR@1 79.1, IR@1 61.4 on the COCO 5k test set, unilm/beit3 README),
# converted with
#   python tools/model_converters/beit3_to_toolkit.py beit3_base_patch16_384_coco_retrieval.pth \
#       data/pretrained/beit3/beit3_base_patch16_384_coco_retrieval.safetensors
# The Flickr30k model (beit3_base_patch16_384_f30k_retrieval) has the same layout and loads the same way.
# Fine-tuning with this config follows the 224 px recipe it inherits, at 384 px.
_base_ = ['./beit3_base-patch16-224-spm64k_16xb192-15e_coco-ret.py']
load_from = 'data/pretrained/beit3/beit3_base_patch16_384_coco_retrieval.safetensors'
img_size = 384  # unilm/beit3 retrieval fine-tunes and evaluates at 384 px
model = dict(
    backbone=dict(
        img_size=img_size,
        attention='multiway',  # torchscale's per-modality q/k/v/out projections, as in the checkpoints
        num_vl_layers=0,  # torchscale's BEiT3 has no vision-language experts
    ),
)
# unilm/beit3 datasets.build_transform(is_train=False): PIL bicubic resize to 384 x 384, mean = std = 0.5
# (the data preprocessor's 127.5). Decoding and resizing with Pillow give its pixels exactly; cv2's bicubic
# (no antialiasing) does not (tests/pretrain/test_beit3_official_parity.py).
test_pipeline = [
    dict(type='LoadImageSafely', imdecode_backend='pillow'),
    dict(
        type='Resize',
        scale=(img_size, img_size),
        keep_ratio=False,
        backend='pillow',
        interpolation='bicubic',
    ),
    dict(type='PackImageTextInputs'),
]
# Plain resize as the 224 px recipe; unilm trains with RandomResizedCrop(scale=(0.5, 1)), flips and
# RandAugment.
train_pipeline = [
    dict(type='LoadImageSafely', imdecode_backend='pillow'),
    dict(
        type='Resize', scale=(img_size, img_size), keep_ratio=False, backend='pillow', interpolation='bicubic'
    ),
    dict(type='SampleCaption'),
    dict(type='PackImageTextInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
