# BEiT-3 large dual encoder at 384 px with the released unilm/beit3 COCO retrieval weights
# (beit3_large_patch16_384_coco_retrieval: TR@1 82.1, IR@1 63.4, unilm/beit3 README), converted with
#   python tools/model_converters/beit3_to_toolkit.py beit3_large_patch16_384_coco_retrieval.pth \
#       data/pretrained/beit3/beit3_large_patch16_384_coco_retrieval.safetensors
# beit3_large_patch16_384_f30k_retrieval loads the same way.
_base_ = ['./beit3_base-patch16-384-spm64k_unilm_coco-ret.py']
load_from = 'data/pretrained/beit3/beit3_large_patch16_384_coco_retrieval.safetensors'
model = dict(
    # unilm/beit3 _get_large_config: 24 layers, 1024 wide, 16 heads, FFN 4 x 1024
    backbone=dict(embed_dim=1024, depth=24, num_heads=16, ffn_dim=4096),
)
