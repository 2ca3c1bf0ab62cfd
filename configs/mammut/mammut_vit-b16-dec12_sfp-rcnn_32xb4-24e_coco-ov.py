# MaMMUT open-vocabulary detector on OV-COCO (48 base / 17 novel; Zareian et al. 2021), paper scale: the
# MaMMUT ViT-B/16 pretrained with cropped positional embeddings (mammut_vit-b16-dec12_32xb64-10e_cc3m.py),
# 1024 x 1024 inputs with large-scale jitter (RO-ViT Sec. 4.1, after ViTDet), trained on base boxes and
# names; tested with all 65 names, AP50 on novel and base (OpenVocabCocoMetric).
_base_ = [
    '../_base_/models/mammut-det_vit-b16-dec12_sfp-rcnn.py',
    '../_base_/datasets/coco_ov_detection.py',
    '../_base_/datasets/lsj_1024_pipelines.py',
    '../_base_/schedules/mammut-det_adamw_cosine_24e.py',
    '../_base_/default_runtime.py',
]
model = dict(
    pretrained=None,  # a MaMMUT checkpoint of mammut_vit-b16-dec12_32xb64-10e_cc3m.py (local path)
    templates=('a photo of a {}.', 'a photo of the {}.', 'a photo of one {}.', 'a close-up photo of a {}.'),
    # RO-ViT / F-VLM ensemble with the frozen MaMMUT's region embeddings (F-VLM Sec. 3.3: 0.35 / 0.65).
    ensemble=dict(alpha=0.35, beta=0.65, base_names={{_base_.ov_split.base}}),
)
train_dataloader = dict(
    batch_size=4,  # x 32 GPUs = 128 images a step
    batch_sampler=None,  # every input is 1024 x 1024
    dataset=dict(pipeline={{_base_.lsj_train_pipeline}}),
)
val_dataloader = dict(dataset=dict(pipeline={{_base_.lsj_test_pipeline}}))
test_dataloader = val_dataloader
