# FIBER-B fine-grained detector (Dou et al., NeurIPS 2022, Sec. 3.2): Swin-B + RoBERTa-base fused in their
# last 6 blocks/layers, an FPN on strides 8-128 and GLIP's DyHead grounding head (microsoft/FIBER
# fine_grained/configs/e2e_dyhead_SwinT_B_FPN_coco_finetuning_fusion_backbone.yaml).
# Local files, nothing is downloaded: data/pretrained/roberta-base/ (Hugging Face folder: config.json,
# weights, tokenizer.json). Fine-tuning starts from a FIBER fine-grained checkpoint converted with
# pretrain.models.fiber_converters.convert_fiber_checkpoint (set load_from in the config that uses this).
roberta = 'data/pretrained/roberta-base/'
model = dict(
    type='FIBERDetector',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],  # FIBER's PIXEL_MEAN/STD (BGR there), RGB here
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32,  # DATALOADER.SIZE_DIVISIBILITY
    ),
    backbone=dict(
        type='FIBERBackbone',
        preset='fiber-b',  # Swin-B 384 (window 12) + RoBERTa-base, K = 6
        image=dict(out_indices=(1, 2, 3), drop_path_rate=0.4),  # C3-C5; DROP_PATH_RATE of the COCO/LVIS yaml
        text=dict(pretrained=roberta),
        with_cp=True,  # BACKBONE.USE_CHECKPOINT
    ),
    neck=dict(
        type='FPN',  # SWINT-FPN-RETINANET: P3-P5 from C3-C5, P6/P7 from P5
        in_channels=[256, 512, 1024],
        out_channels=256,
        start_level=0,
        add_extra_convs='on_output',
        relu_before_extra_convs=True,
        num_outs=5,
    ),
    bbox_head=dict(
        type='FIBERGroundingHead',
        in_channels=256,
        feat_channels=256,  # DYHEAD.CHANNELS
        lang_dim=768,  # LANGUAGE_BACKBONE.LANG_DIM
        num_dyhead_blocks=6,  # DYHEAD.NUM_CONVS, with DyReLU, scale attention and deformable convs
        with_cp=True,  # DYHEAD.USE_CHECKPOINT
        anchor_generator=dict(
            type='AnchorGenerator',
            ratios=[1.0],
            octave_base_scale=8,  # RPN.ANCHOR_SIZES (64, ..., 1024) on strides (8, ..., 128)
            scales_per_octave=1,
            strides=[8, 16, 32, 64, 128],
            center_offset=0.5,
        ),
    ),
    tokenizer=dict(type='HFTokenizer', path=roberta + 'tokenizer.json', context_length=256),  # MAX_QUERY_LEN
    train_cfg=dict(assigner=dict(type='ATSSAssigner', topk=9), allowed_border=-1, pos_weight=-1, debug=False),
    test_cfg=dict(
        nms_pre=1000,  # ATSS PRE_NMS_TOP_N
        min_bbox_size=0,
        score_thr=0.05,  # ATSS INFERENCE_TH
        nms=dict(type='nms', iou_threshold=0.6),  # ATSS NMS_TH
        max_per_img=100,
        chunked_size=-1,  # one prompt with every name (LVIS configs use 40)
    ),
)
