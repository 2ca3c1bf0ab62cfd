# MaMMUT open-vocabulary detector on OV-LVIS (ViLD's split: the 866 frequent + common categories are base,
# the 337 rare ones novel), paper scale; OpenVocabLVISMetric reports AP_r (novel), AP_c and AP_f. The OV-COCO
# recipe (mammut_vit-b16-dec12_sfp-rcnn_32xb4-24e_coco-ov.py: 1024 px LSJ, ensemble 0.35 / 0.65) with LVIS
# data, repeat-factor sampling and 300 detections an image.
_base_ = [
    '../_base_/models/mammut-det_vit-b16-dec12_sfp-rcnn.py',
    '../_base_/datasets/lvis_v1_detection.py',
    '../_base_/datasets/lsj_1024_pipelines.py',
    '../_base_/schedules/mammut-det_adamw_cosine_24e.py',
    '../_base_/default_runtime.py',
]
data_root = 'data/coco/'  # as the LVIS data set base
lvis_categories = 'annotations/lvis_v1_val.json'  # any LVIS v1 file: its categories carry the frequencies
model = dict(
    pretrained=None,  # a MaMMUT checkpoint of mammut_vit-b16-dec12_32xb64-10e_cc3m.py (local path)
    templates=('a photo of a {}.', 'a photo of the {}.', 'a photo of one {}.', 'a close-up photo of a {}.'),
    # Names outside frequent + common (the rare ones) get beta.
    ensemble=dict(alpha=0.35, beta=0.65, base_names=data_root + lvis_categories),
    test_cfg=dict(rcnn=dict(score_thr=0.0001, max_per_img=300)),  # LVIS keeps 300 detections an image
)
train_dataloader = dict(
    _delete_=True,
    batch_size=4,  # x 32 GPUs = 128 images a step
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='ClassBalancedDataset',  # repeat-factor sampling (Gupta et al. 2019, Sec. 5)
        oversample_thr=1e-3,
        dataset=dict(
            type='OVLVISDataset',
            data_root=data_root,
            ann_file='annotations/lvis_v1_train.json',
            data_prefix=dict(img=''),
            ov_split=lvis_categories,  # frequent + common base, rare novel
            vocabulary='base',  # rare boxes and names never reach training
            filter_cfg=dict(filter_empty_gt=True, min_size=32),
            pipeline={{_base_.lsj_train_pipeline}},
        ),
    ),
)
val_dataloader = dict(
    dataset=dict(
        ov_split=lvis_categories, vocabulary='all', pipeline={{_base_.lsj_test_pipeline}}
    ),  # 1,203 names
)
test_dataloader = val_dataloader
