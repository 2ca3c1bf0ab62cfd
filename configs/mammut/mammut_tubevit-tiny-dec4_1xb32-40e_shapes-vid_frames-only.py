# Ablation of the Shapes World video model: no tubes and no fixed 3D embeddings, i.e. the 2D patches of the
# first and the last frame as a set of images. Nothing tells the model which frame came first, so it cannot
# tell a move left from a move right (or clockwise from counterclockwise): motion questions stay near chance.
_base_ = ['./mammut_tubevit-tiny-dec4_1xb32-40e_shapes-vid.py']
model = dict(video_tokenizer=dict(use_tubes=False, use_fixed_pos=False))
