# MaMMUT open-vocabulary detector on OV-LVIS (ViLD's split: the 866 frequent + common categories are base,
# the 337 rare ones novel), paper scale; the metric reports AP_r (novel), AP_c, AP_f. The OV-COCO recipe
# with LVIS data, repeat-factor sampling and 300 detections an image.
_base_ = ['./mammut_vit-b16-dec12_sfp-rcnn_32xb4-24e_coco-ov.py', '../_base_/datasets/lvis_v1_detection.py']
lvis_categories = 'annotations/lvis_v1_val.json'  # any LVIS v1 file: its categories carry the frequencies
model = dict(
    ensemble=dict(base_names=data_root + lvis_categories),
    test_cfg=dict(rcnn=dict(score_thr=0.0001, max_per_img=300)),  # LVIS keeps 300 detections an image
)
train_dataloader = dict(
    dataset=dict(
        _delete_=True,  # repeat-factor sampling wraps the LVIS training set (Gupta et al. 2019, Sec. 5)
        type='ClassBalancedDataset',
        oversample_thr=1e-3,
        dataset=dict(
            type='OVLVISDataset',
            data_root=data_root,
            ann_file='annotations/lvis_v1_train.json',
            data_prefix=dict(img=''),
            ov_split=lvis_categories,  # frequent + common base, rare novel
            vocabulary='base',  # rare boxes and names never reach training
            filter_cfg=dict(filter_empty_gt=True, min_size=32),
            pipeline={{_base_.train_pipeline}},
        ),
    )
)
val_dataloader = dict(
    batch_size=1,
    dataset=dict(ov_split=lvis_categories, vocabulary='all', pipeline={{_base_.test_pipeline}}),
)
test_dataloader = val_dataloader
