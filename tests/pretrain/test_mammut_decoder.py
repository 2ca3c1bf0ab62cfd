"""MaMMUTTextDecoder passes (masking, causality, image dependence), KV cache and generation."""

from __future__ import annotations

import pytest
import torch

from pretrain.models.generation import beam_search, generate, greedy_search
from pretrain.models.text_decoder import MaMMUTTextDecoder
from toolkit.registry import MODELS

VOCAB, BOS, EOS, PAD = 50, 1, 2, 0


def _decoder(**kwargs) -> MaMMUTTextDecoder:
    cfg = dict(
        type='MaMMUTTextDecoder',
        vocab_size=VOCAB,
        context_length=16,
        width=32,
        depth=2,
        num_heads=4,
        embed_dim=24,
    )
    cfg.update(kwargs)
    torch.manual_seed(0)
    return MODELS.build(cfg).eval()


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    txt_ids = torch.tensor([[BOS, 5, 6, 7, 8, EOS, PAD, PAD], [BOS, 9, 10, EOS, PAD, PAD, PAD, PAD]])
    return txt_ids, torch.tensor([6, 4])


def test_cross_attn_layer_choice():
    assert _decoder(depth=4).cross_layers == (1, 3)
    assert _decoder(depth=4, cross_attn_layers='upper_half').cross_layers == (2, 3)
    assert _decoder(depth=4, cross_attn_layers=[0, -1]).cross_layers == (0, 3)
    with pytest.raises(ValueError, match='cross_attn_layers'):
        _decoder(cross_attn_layers='sometimes')


def test_contrastive_pass_bidirectional_and_ignores_padding():
    decoder = _decoder()
    txt_ids, lengths = _ids()
    tokens = decoder.encode_tokens(txt_ids, causal=False, lengths=lengths)
    changed = txt_ids.clone()
    changed[0, 4] = 20  # a later token
    tokens_changed = decoder.encode_tokens(changed, causal=False, lengths=lengths)
    assert not torch.allclose(tokens[0, :4], tokens_changed[0, :4]), 'earlier positions must see later tokens'

    txt_emb = decoder.forward_contrastive(txt_ids, lengths)
    assert txt_emb.shape == (2, 24)
    padded = torch.cat([txt_ids, torch.full((2, 3), PAD)], dim=1)
    torch.testing.assert_close(decoder.forward_contrastive(padded, lengths), txt_emb, atol=1e-6, rtol=1e-5)
    garbage = txt_ids.clone()
    garbage[1, 4:] = 33  # values after the EOS are masked out whatever they are
    torch.testing.assert_close(
        decoder.forward_contrastive(garbage, lengths)[1], txt_emb[1], atol=1e-6, rtol=1e-5
    )


def test_generative_pass_causal_and_image_dependent():
    decoder = _decoder()
    txt_ids, _ = _ids()
    img_ctx = torch.randn(2, 5, 32)
    logits = decoder.forward_generative(txt_ids, img_ctx)
    assert logits.shape == (2, 8, VOCAB)
    changed = txt_ids.clone()
    changed[:, 3] = 40
    logits_changed = decoder.forward_generative(changed, img_ctx)
    torch.testing.assert_close(logits_changed[:, :3], logits[:, :3])
    assert not torch.allclose(logits_changed[:, 3:], logits[:, 3:])
    other_img = decoder.forward_generative(txt_ids, torch.randn(2, 5, 32))
    assert not torch.allclose(other_img, logits), 'the generative pass must depend on the image'


def test_image_mask_hides_masked_tokens():
    decoder = _decoder()
    txt_ids, _ = _ids()
    img_ctx = torch.randn(2, 5, 32)
    img_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    base = decoder.forward_generative(txt_ids, img_ctx, img_mask)
    noisy = img_ctx.clone()
    noisy[0, 3:] += 50.0
    torch.testing.assert_close(decoder.forward_generative(txt_ids, noisy, img_mask)[0], base[0])
    additive = torch.zeros(2, 5).masked_fill(~img_mask, float('-inf'))
    torch.testing.assert_close(decoder.forward_generative(txt_ids, img_ctx, additive), base)
    assert not torch.allclose(decoder.forward_generative(txt_ids, noisy)[0], base[0])


def test_grad_checkpointing_same_gradients():
    decoder = _decoder().train()
    txt_ids, lengths = _ids()
    img_ctx = torch.randn(2, 5, 32)

    def grads() -> dict[str, torch.Tensor]:
        decoder.zero_grad(set_to_none=True)
        loss = decoder.forward_generative(txt_ids, img_ctx).square().mean()
        (loss + decoder.forward_contrastive(txt_ids, lengths).square().mean()).backward()
        return {name: p.grad.clone() for name, p in decoder.named_parameters()}

    plain = grads()
    decoder.set_grad_checkpointing(True)
    for name, grad in grads().items():
        torch.testing.assert_close(grad, plain[name], atol=1e-6, rtol=1e-4)


def test_step_cache_equals_full_pass():
    decoder = _decoder(tie_embeddings=False)
    txt_ids, _ = _ids()
    img_ctx = torch.randn(2, 5, 32)
    full = decoder.forward_generative(txt_ids, img_ctx)
    cache = decoder.init_cache(img_ctx)
    prefix = decoder.step(txt_ids[:, :3], cache)  # multi-token prefill
    rest = [decoder.step(txt_ids[:, t : t + 1], cache) for t in range(3, txt_ids.shape[1])]
    stepped = torch.cat([prefix, *rest], dim=1)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-4)
    assert cache.length == txt_ids.shape[1]
    with pytest.raises(ValueError, match='context_length'):
        decoder.step(torch.full((2, 9), 5), cache)


def test_contrastive_pass_gradients_skip_cross_attention():
    decoder = _decoder(tie_embeddings=False).train()
    txt_ids, lengths = _ids()
    decoder.forward_contrastive(txt_ids, lengths).sum().backward()
    unused = {name for name, p in decoder.named_parameters() if p.grad is None}
    assert unused == {name for name, _ in decoder.cross_attention_parameters()}
    decoder.zero_grad(set_to_none=True)
    decoder.forward_generative(txt_ids, torch.randn(2, 5, 32)).square().mean().backward()
    assert {name for name, p in decoder.named_parameters() if p.grad is None} == {'text_proj.weight'}


@pytest.fixture(scope='module')
def gen_setup():
    # float64 and large random weights: varied, non-degenerate outputs without near-ties in the arg-max.
    decoder = _decoder(depth=3, context_length=12).double()
    torch.manual_seed(1)
    with torch.no_grad():
        for param in decoder.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.25)
    img_ctx = torch.randn(4, 5, 32, dtype=torch.float64)
    return decoder, img_ctx


SPECIAL = dict(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)


def test_greedy_cached_equals_uncached(gen_setup):
    decoder, img_ctx = gen_setup
    cached = greedy_search(decoder, img_ctx, max_len=10, use_cache=True, **SPECIAL)
    uncached = greedy_search(decoder, img_ctx, max_len=10, use_cache=False, **SPECIAL)
    assert torch.equal(cached, uncached)
    assert cached.shape == (4, 11) and (cached[:, 0] == BOS).all()
    assert len({tuple(row) for row in cached.tolist()}) > 2, 'degenerate test model'


@pytest.mark.parametrize('beam_size', [2, 3])
@pytest.mark.parametrize('min_len', [0, 2])
def test_beam_cached_equals_uncached(gen_setup, beam_size, min_len):
    decoder, img_ctx = gen_setup
    kwargs = dict(beam_size=beam_size, max_len=10, min_len=min_len, length_penalty=1.0, **SPECIAL)
    cached = beam_search(decoder, img_ctx, use_cache=True, **kwargs)
    uncached = beam_search(decoder, img_ctx, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    if min_len:
        assert cached.shape[1] > 3 and not torch.equal(
            cached, greedy_search(decoder, img_ctx, max_len=10, min_len=min_len, **SPECIAL)
        )


@pytest.mark.parametrize('min_len', [0, 2])
def test_beam_one_equals_greedy(gen_setup, min_len):
    decoder, img_ctx = gen_setup
    greedy = generate(decoder, img_ctx, method='greedy', max_len=10, min_len=min_len, **SPECIAL)
    beam = generate(decoder, img_ctx, method='beam', beam_size=1, max_len=10, min_len=min_len, **SPECIAL)
    assert torch.equal(greedy, beam)


def _eos_biased_decoder(after: int):
    """A decoder wrapper whose LM strongly prefers EOS from generated position ``after`` on."""
    decoder = _decoder(context_length=12)

    class Biased(torch.nn.Module):
        vocab_size, context_length = decoder.vocab_size, decoder.context_length

        def init_cache(self, img_ctx):
            return decoder.init_cache(img_ctx)

        def _bias(self, logits, start):
            positions = torch.arange(start, start + logits.shape[1])
            logits = logits.clone()
            logits[:, positions >= after, EOS] += 1e3
            return logits

        def step(self, txt_ids, cache, img_mask=None):
            start = cache.length
            return self._bias(decoder.step(txt_ids, cache, img_mask), start)

        def forward_generative(self, txt_ids, img_ctx, img_mask=None):
            return self._bias(decoder.forward_generative(txt_ids, img_ctx, img_mask), 0)

    return Biased()


@pytest.mark.parametrize('method', ['greedy', 'beam'])
def test_stops_at_eos_and_pads(method):
    decoder = _eos_biased_decoder(after=3)
    img_ctx = torch.randn(2, 5, 32)
    out = generate(decoder, img_ctx, method=method, beam_size=2, max_len=10, **SPECIAL)
    # position 3 of the sequence is predicted from input position 3 -> EOS is token index 4
    assert out.shape == (2, 5)
    assert (out[:, 4] == EOS).all() and not (out[:, 1:4] == EOS).any()
    # min_len forbids the early EOS
    out_min = generate(decoder, img_ctx, method=method, beam_size=2, max_len=10, min_len=5, **SPECIAL)
    assert out_min.shape == (2, 7) and (out_min[:, 6] == EOS).all()


def test_greedy_pads_finished_rows():
    decoder = _decoder(context_length=12)
    img_ctx = torch.randn(2, 5, 32)
    calls = {'n': 0}
    original = decoder.step

    def step(txt_ids, cache, img_mask=None):
        logits = original(txt_ids, cache, img_mask).clone()
        calls['n'] += 1
        if calls['n'] == 2:
            logits[0, -1, EOS] += 1e3  # row 0 ends at its 2nd token, row 1 runs on
        if calls['n'] == 5:
            logits[1, -1, EOS] += 1e3
        return logits

    decoder.step = step
    out = greedy_search(decoder, img_ctx, max_len=10, **SPECIAL)
    assert out.shape == (2, 6)
    assert out[0, 2] == EOS and (out[0, 3:] == PAD).all()
    assert out[1, 5] == EOS
