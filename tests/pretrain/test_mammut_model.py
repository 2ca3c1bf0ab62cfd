"""MaMMUT end to end at tiny size: build, two-pass loss, gradients, pass order, predict/tensor modes."""

from __future__ import annotations

import pytest
import torch
from mmengine.structures import BaseDataElement

from toolkit.registry import MODELS

WORDS = [f'w{i}' for i in range(44)]


@pytest.fixture(scope='module')
def tokenizer_path(tmp_path_factory) -> str:
    """A word-level tokenizer.json (50 ids: 4 specials + 46 words) built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {
        token: index for index, token in enumerate(['<pad>', '<bos>', '<eos>', '<unk>', *WORDS, 'a', 'b'])
    }
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp('tok') / 'tokenizer.json'
    tokenizer.save(str(path))
    return str(path)


def _cfg(tokenizer_path: str, **kwargs) -> dict:
    cfg = dict(
        type='MaMMUT',
        embed_dim=24,
        image_encoder=dict(
            type='MaMMUTViT', img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, detection_grid=16
        ),
        text_decoder=dict(type='MaMMUTTextDecoder', width=32, depth=2, num_heads=4, tie_embeddings=False),
        tokenizer=dict(type='HFTokenizer', path=tokenizer_path, context_length=10),
        generation=dict(method='greedy', max_len=6),
    )
    cfg.update(kwargs)
    return cfg


def _build(tokenizer_path: str, **kwargs):
    torch.manual_seed(0)
    return MODELS.build(_cfg(tokenizer_path, **kwargs))


def _train_batch(batch: int = 4) -> tuple[torch.Tensor, list[BaseDataElement]]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, 32, 32, generator=gen)
    samples = [BaseDataElement(text=' '.join(WORDS[i : i + 2 + i % 4])) for i in range(batch)]
    return images, samples


def test_two_pass_loss_reaches_every_parameter(tokenizer_path):
    model = _build(tokenizer_path)
    assert model.text_decoder.vocab_size == 50 and model.text_decoder.context_length == 10
    images, samples = _train_batch()
    out = model(images, samples, mode='loss')
    assert {'loss_contrastive', 'loss_caption', 'logit_scale', 'logit_bias', 'acc_i2t', 'acc_t2i'} <= set(out)
    loss_keys = sorted(key for key in out if 'loss' in key)
    assert loss_keys == ['loss_caption', 'loss_contrastive']
    assert all(torch.isfinite(out[key]) and out[key].requires_grad for key in loss_keys)
    assert not any(value.requires_grad for key, value in out.items() if 'loss' not in key)
    torch.testing.assert_close(out['logit_scale'], torch.tensor(1 / 0.07))
    sum(out[key] for key in loss_keys).backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    zero = [name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() == 0]
    assert zero == []


def test_attn_pool_and_infonce_variant(tokenizer_path):
    model = _build(tokenizer_path, pool='attn', contrastive_loss=dict(type='InfoNCELoss'))
    assert model.logit_bias is None
    images, samples = _train_batch()
    out = model(images, samples, mode='loss')
    (out['loss_contrastive'] + out['loss_caption']).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_contrastive_only_builds_no_generative_parts(tokenizer_path):
    model = _build(tokenizer_path, contrastive_only=True)
    assert model.text_decoder.cross_layers == () and model.text_decoder.lm_head is None
    assert model.caption_loss is None and model.img_ctx_proj is None
    images, samples = _train_batch()
    out = model(images, samples, mode='loss')
    assert 'loss_caption' not in out and out['contrastive_first'] == 1.0
    out['loss_contrastive'].backward()
    # Nothing is legitimately unused: cross-attention and LM head are not built at all.
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    predicted = model(images, [BaseDataElement(gt_captions=['w1 w2'], img_id=0)] * 4, mode='predict')
    assert 'pred_caption' not in predicted[0]


def test_pass_order_follows_torch_seed(tokenizer_path):
    model = _build(tokenizer_path)
    images, samples = _train_batch()
    orders = []
    for seed in range(8):
        torch.manual_seed(seed)
        expected = bool(torch.randint(0, 2, ()).item())
        torch.manual_seed(seed)
        order = bool(model(images, samples, mode='loss')['contrastive_first'])
        assert order == expected
        orders.append(order)
    assert len(set(orders)) == 2, 'both orders should occur over 8 seeds'
    fixed = _build(tokenizer_path, shuffle_passes=False)
    assert all(fixed(images, samples, mode='loss')['contrastive_first'] == 1.0 for _ in range(3))


def test_caption_targets_ignore_after_eos(tokenizer_path):
    model = _build(tokenizer_path)
    txt_ids, lengths = model._tokenize(['w1 w2', 'w3'], torch.device('cpu'))
    targets = model.caption_targets(txt_ids, lengths)
    # Padding past the longest text of the batch is trimmed; the rest is ignored after EOS.
    assert targets.tolist() == [[5, 6, 2], [7, 2, -100]]


def test_contrastive_pass_ignores_image_generative_uses_it(tokenizer_path):
    model = _build(tokenizer_path).eval()
    images, samples = _train_batch()
    out_a = model(images, samples, mode='tensor')
    out_b = model(torch.randn_like(images), samples, mode='tensor')
    torch.testing.assert_close(out_a['txt_emb'], out_b['txt_emb'])
    assert not torch.allclose(out_a['img_emb'], out_b['img_emb'])
    assert out_a['img_tokens'].shape == (4, 16, 64) and out_a['txt_emb'].shape == (4, 24)
    assert 'txt_emb' not in model(images, None, mode='tensor')
    txt_ids, lengths = model._tokenize([s.text for s in samples], torch.device('cpu'))
    dec = model.text_decoder
    logits_a = dec.forward_generative(txt_ids, model.image_context(model.image_encoder(images)))
    logits_b = dec.forward_generative(
        txt_ids, model.image_context(model.image_encoder(torch.randn_like(images)))
    )
    assert not torch.allclose(logits_a, logits_b)


@pytest.mark.parametrize(
    'generation', [dict(method='beam', beam_size=2, max_len=5), None, dict(method='none')]
)
def test_predict_fields(tokenizer_path, generation):
    model = _build(tokenizer_path, generation=generation).eval()
    images = torch.randn(3, 3, 32, 32)
    samples = [BaseDataElement(gt_captions=['w1 w2'] * (i + 1), img_id=i) for i in range(3)]
    out = model(images, samples, mode='predict')
    for index, sample in enumerate(out):
        assert sample.img_emb.shape == (24,) and sample.img_emb.device.type == 'cpu'
        assert sample.txt_emb.shape == (index + 1, 24)
        torch.testing.assert_close(sample.img_emb.norm(), torch.tensor(1.0))
        torch.testing.assert_close(sample.txt_emb.norm(dim=-1), torch.ones(index + 1))
        if generation is None or generation['method'] == 'none':
            assert 'pred_caption' not in sample
        else:
            assert isinstance(sample.pred_caption, str)
            assert all(word in WORDS + ['a', 'b', '<unk>', '<pad>'] for word in sample.pred_caption.split())


def test_public_helpers(tokenizer_path):
    model = _build(tokenizer_path).eval()
    images = torch.randn(2, 3, 32, 32)
    assert model.encode_image(images).shape == (2, 24)
    txt_emb = model.encode_text(['w1', 'w2 w3 w4'])
    torch.testing.assert_close(txt_emb.norm(dim=-1), torch.ones(2))
    captions = model.generate(images, method='beam', beam_size=2, max_len=4)
    assert len(captions) == 2 and all(isinstance(c, str) and len(c.split()) <= 4 for c in captions)


def test_config_errors(tokenizer_path):
    with pytest.raises(ValueError, match='vocab_size'):
        _build(
            tokenizer_path,
            text_decoder=dict(type='MaMMUTTextDecoder', width=32, depth=2, num_heads=4, vocab_size=7),
        )
    with pytest.raises(ValueError, match='generation'):
        _build(tokenizer_path, generation=dict(method='greedy', beams=3))
    with pytest.raises(KeyError, match='MaMMUTViT'):
        _build(tokenizer_path, image_encoder=dict(type='MaMMUTVit'))


def test_bf16_autocast_and_short_training_reduces_loss(tokenizer_path):
    model = _build(tokenizer_path)
    images, samples = _train_batch()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(images, samples, mode='loss')
    assert torch.isfinite(out['loss_contrastive']) and torch.isfinite(out['loss_caption'])
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(12):
        torch.manual_seed(step)
        out = model(images, samples, mode='loss')
        loss = out['loss_contrastive'] + out['loss_caption']
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_hard_negative_captions_join_the_contrastive_loss(tokenizer_path):
    model = _build(tokenizer_path, shuffle_passes=False).eval()  # full positional embeddings, no crop
    images, samples = _train_batch()
    torch.manual_seed(0)
    plain = model(images, samples, mode='loss')
    for index, sample in enumerate(samples):
        sample.negative_text = ' '.join(WORDS[index + 20 : index + 23])
    torch.manual_seed(0)
    with_negatives = model(images, samples, mode='loss')
    img_emb = model.encode_image(images)
    txt_emb = model.encode_text([s.text for s in samples])
    neg_emb = model.encode_text([s.negative_text for s in samples])
    expected = model.contrastive_loss(
        img_emb, txt_emb, model.current_logit_scale(), model.logit_bias, neg_txt_emb=neg_emb
    )
    torch.testing.assert_close(with_negatives['loss_contrastive'], expected)
    torch.testing.assert_close(with_negatives['loss_caption'], plain['loss_caption'])  # captions only
    correct = ((img_emb * txt_emb).sum(-1) > (img_emb * neg_emb).sum(-1)).float().mean()
    torch.testing.assert_close(with_negatives['acc_neg'], correct)
    samples[0].negative_text = None
    del samples[1].negative_text
    with pytest.raises(ValueError, match="only some samples of the batch have 'negative_text'"):
        model(images, samples, mode='loss')
