# openMaMMUT ViT-L-14 (`mammut_ViT-L-14`; released: openMaMMUT-ViT-L-14-DataComp-1.4B-s12.8B-b180K) as our
# MaMMUT, for weights converted by tools/model_converters/openmammut_to_toolkit.py.
_base_ = ['./mammut_openmammut-vit-b32-dec12_converted_datacomp-1.4b.py']
model = dict(
    image_encoder=dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16),  # width 1024 / head_width 64
    text_decoder=dict(width=768, num_heads=12, cross_layer_self_mlp=True),  # has_mlp: the default, true
    embed_dim=768,
)
