# Ablation arm of ..._shapes-ov.py: the same detector and fine-tuning from the MaMMUT pretrained WITHOUT
# cropped positional embeddings (mammut_vit-tiny-dec4_1xb32-30e_shapes-ovd-pretrain_no-cpe.py).
_base_ = ['./mammut_vit-tiny-dec4_sfp-rcnn_1xb16-12e_shapes-ov.py']
model = dict(
    vlm=dict(image_encoder=dict(cropped_pos_emb=False)),  # as pretrained (the detector's ViT never crops)
    pretrained='work_dirs/mammut_ovd_pretrain_no-cpe/epoch_30.pth',
)
