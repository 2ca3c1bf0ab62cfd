# ALBEF ViT-B/16 + BERT-base (Li et al., NeurIPS 2021, Sec. 4; salesforce/ALBEF configs/config_bert.json):
# BERT's first 6 layers encode text, the last 6 fuse it with the image; the model that the pretraining and
# the retrieval configs share (they set the image size, the heads and the losses).
bert = 'data/pretrained/bert-base-uncased/'  # a HuggingFace bert-base-uncased folder (tokenizer.json)
model = dict(
    type='ALBEF',
    data_preprocessor=dict(
        type='ImgDataPreprocessor',
        mean=[122.771, 116.746, 104.094],  # ALBEF normalises with CLIP's RGB statistics x 255
        std=[68.501, 66.632, 70.323],
        bgr_to_rgb=True,
    ),
    image_encoder=dict(
        type='MaMMUTViT',
        img_size=256,  # ALBEF pretrains at 256 x 256, fine-tunes retrieval at 384
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        class_token=True,
        final_pool='tok',
        cropped_pos_emb=False,
        layer_norm_eps=1e-6,  # DeiT / timm
    ),
    text_encoder=dict(
        hidden_size=768,
        num_layers=12,
        num_text_layers=6,  # config_bert.json fusion_layer 6
        num_heads=12,
        ffn_dim=3072,
        max_positions=512,
    ),
    tokenizer=dict(type='HFTokenizer', path=bert + 'tokenizer.json', context_length=30),  # ALBEF max_words 30
    mask_token_id=103,  # bert-base-uncased [MASK]: the vocabulary stays BERT's 30,522 rows
    embed_dim=256,
    queue_size=65536,
    momentum=0.995,
    alpha=0.4,
    temperature_init=0.07,
)
