# Ablation of the motion-question model: no tubes and no fixed 3D embeddings (the first and the last frame as
# a set of images): the direction of a move or a turn cannot be told, motion answers stay near chance.
_base_ = ['./mammut_tubevit-tiny-dec4_1xb32-30e_shapes-motion-qa.py']
model = dict(video_tokenizer=dict(use_tubes=False, use_fixed_pos=False))
