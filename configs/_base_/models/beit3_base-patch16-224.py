# BEiT-3 base (Wang et al., CVPR 2023): Multiway Transformer, 12 layers, 768 wide, 12 heads, FFN 3072, 16 px
# patches at 224 px (unilm/beit3 `_get_base_config`, BEiT3-base in the unilm/beit3 README); MDM pretraining
# with BEiT v2 visual tokens (Sec. 2.2).
model = dict(
    type='BEiT3',
    data_preprocessor=dict(
        type='ImgDataPreprocessor',
        mean=[127.5, 127.5, 127.5],  # unilm/beit3 normalises with Inception statistics (0.5, 0.5) x 255
        std=[127.5, 127.5, 127.5],
        bgr_to_rgb=True,
    ),
    backbone=dict(
        type='MultiwayTransformer',
        vocab_size=64010,  # SentencePiece 64k vocabulary (Sec. 2.4); 64,010 ids in unilm/beit3's configs
        img_size=224,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        ffn_dim=3072,  # 4 x 768
        num_vl_layers=3,  # "the top three Multiway Transformer layers" have VL experts (Sec. 2.1)
        max_text_len=1022,  # torchscale's max_source_positions=1024 rows, positions from 2
        attention='shared',  # Sec. 2.1; 'multiway' is the layout of the released (torchscale) checkpoints
        drop_path_rate=0.1,  # stochastic depth 0.1 (Sec. 2.4)
    ),
    # BEiT-3's SentencePiece model (beit3.spm from unilm/beit3) saved as a HuggingFace tokenizer.json, see
    # docs/beit3.md; BOS <s>, EOS </s>, padding <pad> as XLM-R.
    tokenizer=dict(
        type='HFTokenizer',
        path='data/pretrained/beit3/tokenizer.json',
        context_length=64,  # unilm/beit3's num_max_bpe_tokens
    ),
    mask_token_id=64009,  # XLM-R's <mask>: the last of the 64,010 ids (beit3.spm + fairseq offset + <mask>)
    mdm_loss=dict(type='MDMLoss'),
    # BEiT v2's released VQ-KD tokenizer (CLIP teacher, 8192 x 32 codebook) saved under this name.
    visual_target=dict(
        type='VQKDTokenizer',
        img_size=224,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        codebook_size=8192,
        code_dim=32,
        mean=[127.5, 127.5, 127.5],  # the data preprocessor's, undone before BEiT v2's [-1, 1] scaling
        std=[127.5, 127.5, 127.5],
        checkpoint='data/pretrained/beitv2/vqkd_encoder_base_decoder_1x768x12_clip.pth',
    ),
    mixture=dict(image=1, text=1, pair=1),  # 2048 images, 2048 texts, 2048 pairs a batch (Sec. 2.4)
    txt_mask_prob=0.15,  # monomodal texts (Sec. 2.2)
    pair_txt_mask_prob=0.5,  # texts of image-text pairs (Sec. 2.2)
    img_mask_ratio=0.4,  # block-wise, as BEiT (Sec. 2.2)
    min_mask_patches=16,  # BEiT's minimum block at 14 x 14 patches
)
