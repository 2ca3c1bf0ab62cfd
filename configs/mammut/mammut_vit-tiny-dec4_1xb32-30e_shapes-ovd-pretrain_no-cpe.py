# Ablation arm of ..._shapes-ovd-pretrain.py: the same pretraining with full (un-cropped) positional
# embeddings. Fine-tuned the same way by ..._shapes-ov_no-cpe.py.
_base_ = ['./mammut_vit-tiny-dec4_1xb32-30e_shapes-ovd-pretrain.py']
model = dict(image_encoder=dict(cropped_pos_emb=False))
