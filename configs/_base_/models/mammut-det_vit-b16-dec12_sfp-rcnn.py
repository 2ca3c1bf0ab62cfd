# MaMMUT open-vocabulary detector (MaMMUT Sec. 4.3 after RO-ViT Sec. 3.3): the pretrained MaMMUT ViT-B/16
# with full up-sampled positional embeddings, ViTDet's simple feature pyramid, an RPN and a RoI head whose
# classifier is the MaMMUT text decoder's contrastive embedding of each category name.
_base_ = ['./mammut_vit-b16-dec12.py']
vlm = {{_base_.model}}
model = dict(
    _delete_=True,  # the detector replaces the pretraining model; the latter becomes its frozen `vlm`
    type='MaMMUTDetector',
    vlm=vlm,
    pretrained=None,  # a MaMMUT checkpoint (local path) for the ViT and the text decoder
    templates=('a photo of a {}.',),
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[122.771, 116.746, 104.094],  # the pretraining's normalisation (CLIP's RGB mean and std x 255)
        std=[68.501, 66.632, 70.323],
        bgr_to_rgb=True,
        pad_size_divisor=32,
    ),
    neck=dict(
        type='SimpleFeaturePyramid', out_channels=256, scale_factors=(4.0, 2.0, 1.0, 0.5), extra_pool=1
    ),
    rpn_head=dict(
        type='RPNHead',
        in_channels=256,
        feat_channels=256,
        anchor_generator=dict(
            type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]
        ),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder', target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[1.0, 1.0, 1.0, 1.0]
        ),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0),
    ),
    roi_head=dict(
        type='StandardRoIHead',
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32],
        ),
        bbox_head=dict(
            type='TextEmbeddingBBoxHead',
            in_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            reg_class_agnostic=True,  # RO-ViT: class-agnostic boxes (novel classes need boxes too)
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder', target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[0.1, 0.1, 0.2, 0.2]
            ),
            logit_scale_init=50.0,
            loss_cls=dict(type='SoftmaxFocalLoss', gamma=2.0, loss_weight=1.0),  # RO-ViT: focal loss
            loss_bbox=dict(type='L1Loss', loss_weight=1.0),
        ),
    ),
    train_cfg=dict(
        rpn=dict(
            assigner=dict(
                type='MaxIoUAssigner',
                pos_iou_thr=0.7,
                neg_iou_thr=0.3,
                min_pos_iou=0.3,
                match_low_quality=True,
            ),
            sampler=dict(
                type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False
            ),
            allowed_border=-1,
            pos_weight=-1,
            debug=False,
        ),
        rpn_proposal=dict(
            nms_pre=2000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0
        ),
        rcnn=dict(
            assigner=dict(
                type='MaxIoUAssigner',
                pos_iou_thr=0.5,
                neg_iou_thr=0.5,
                min_pos_iou=0.5,
                match_low_quality=False,
            ),
            sampler=dict(
                type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True
            ),
            pos_weight=-1,
            debug=False,
        ),
    ),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(score_thr=0.001, nms=dict(type='nms', iou_threshold=0.5), max_per_img=300),
    ),
)
