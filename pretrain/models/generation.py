"""Greedy and beam-search captioning for :class:`~pretrain.models.text_decoder.MaMMUTTextDecoder`.

Written for our decoder's key/value cache (:meth:`init_cache` computes the image keys/values once,
:meth:`step` appends the self-attention keys/values of each new token). An uncached path recomputes the whole
prefix every step through ``forward_generative``; both paths run the same search code, so their tokens agree
(tests check it). Nothing here depends on ``transformers``' generation utilities.

Beam search follows the usual formulation (Wu et al., 2016 length normalisation ``score / length ** alpha``):
log-probabilities summed per beam, 2K candidates per step, an EOS candidate ranked within the top K closes a
hypothesis, a sample is done once it has K closed hypotheses none of which the best open beam (at the current
length) could beat. ``min_len`` forbids EOS before ``min_len`` tokens were generated.

Outputs are ``(B, 1 + T)`` long tensors ``[bos] tokens [eos] pad...``; finished rows are padded.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['GENERATION_KEYS', 'beam_search', 'generate', 'greedy_search']

# The options of a model's ``generation`` config (MaMMUT, FIBER): ``method`` and :func:`generate`'s settings.
GENERATION_KEYS = frozenset({'method', 'beam_size', 'max_len', 'min_len', 'length_penalty'})


def _next_logprobs(decoder, seqs: Tensor, img_ctx: Tensor, img_mask: Tensor | None, cache) -> Tensor:
    """Log-probabilities (B', V) in float32 of the token after ``seqs`` (B', T)."""
    if cache is not None:
        logits = decoder.step(seqs[:, cache.length :], cache, img_mask)[:, -1]
    else:
        logits = decoder.forward_generative(seqs, img_ctx, img_mask)[:, -1]
    return logits.float().log_softmax(dim=-1)


def _max_new_tokens(decoder, max_len: int) -> int:
    return max(0, min(int(max_len), decoder.context_length - 1))


@torch.no_grad()
def greedy_search(
    decoder,
    img_ctx: Tensor,
    *,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    max_len: int = 30,
    min_len: int = 0,
    img_mask: Tensor | None = None,
    use_cache: bool = True,
    prefix_ids: Tensor | None = None,
    prefix_lengths: Tensor | None = None,
) -> Tensor:
    """Arg-max decoding. ``img_ctx`` (B, N, W) -> token ids (B, 1 + T), T <= max_len.

    A prompt (e.g. a question) is given as ``prefix_ids`` (B, P), the tokens that follow BOS padded at the
    end, with ``prefix_lengths`` (B,) real tokens per row: those tokens are forced, then up to ``max_len``
    tokens are generated (``min_len`` counts from the end of the row's prefix). The output keeps the prefix.
    """
    batch, device = img_ctx.shape[0], img_ctx.device
    seqs = torch.full((batch, 1), bos_token_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    if prefix_ids is None:
        prefix_ids = torch.zeros(batch, 0, dtype=torch.long, device=device)
        prefix_lengths = torch.zeros(batch, dtype=torch.long, device=device)
    elif prefix_lengths is None or prefix_lengths.shape != (batch,) or prefix_ids.shape[0] != batch:
        raise ValueError('prefix_ids (B, P) needs prefix_lengths (B,) for the same batch')
    prefix_ids, prefix_lengths = prefix_ids.to(device), prefix_lengths.to(device)
    cache = decoder.init_cache(img_ctx) if use_cache else None
    steps = _max_new_tokens(decoder, int(prefix_ids.shape[1]) + int(max_len))
    for step in range(steps):
        logprobs = _next_logprobs(decoder, seqs, img_ctx, img_mask, cache)
        generated = step - prefix_lengths  # tokens generated so far after the prefix (< 0: in the prefix)
        logprobs[(generated >= 0) & (generated < min_len), eos_token_id] = float('-inf')
        token = logprobs.argmax(dim=-1)
        if step < prefix_ids.shape[1]:
            token = torch.where(generated < 0, prefix_ids[:, step], token)
        finished |= generated >= max_len
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        seqs = torch.cat([seqs, token[:, None]], dim=1)
        finished |= token == eos_token_id
        if bool(finished.all()):
            break
    return seqs


def _pad_rows(rows: list[list[int]], pad_token_id: int, device: torch.device) -> Tensor:
    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), pad_token_id, dtype=torch.long, device=device)
    for index, row in enumerate(rows):
        out[index, : len(row)] = torch.tensor(row, dtype=torch.long, device=device)
    return out


@torch.no_grad()
def beam_search(
    decoder,
    img_ctx: Tensor,
    *,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    beam_size: int = 4,
    max_len: int = 30,
    min_len: int = 0,
    length_penalty: float = 1.0,
    img_mask: Tensor | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Beam search. ``img_ctx`` (B, N, W) -> best hypothesis ids (B, 1 + T) per image.

    ``length_penalty``: exponent alpha of the length normalisation (0 ranks by total log-probability).
    """
    batch, beams, vocab = img_ctx.shape[0], int(beam_size), decoder.vocab_size
    if beams < 1:
        raise ValueError(f'beam_size must be >= 1, got {beam_size}')
    if 2 * beams > vocab:
        raise ValueError(
            f'beam_size {beams} too large for a vocabulary of {vocab} (needs 2 * beam_size <= V)'
        )
    device = img_ctx.device
    ctx = img_ctx.repeat_interleave(beams, dim=0)
    mask = None if img_mask is None else img_mask.repeat_interleave(beams, dim=0)
    seqs = torch.full((batch * beams, 1), bos_token_id, dtype=torch.long, device=device)
    beam_scores = torch.zeros(batch, beams, device=device)
    beam_scores[:, 1:] = float('-inf')  # all beams start identical: expand only the first
    closed: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    cache = decoder.init_cache(ctx) if use_cache else None
    offsets = torch.arange(batch, device=device)[:, None] * beams

    for step in range(_max_new_tokens(decoder, max_len)):
        logprobs = _next_logprobs(decoder, seqs, ctx, mask, cache)
        if step < min_len:
            logprobs[:, eos_token_id] = float('-inf')
        cand = (beam_scores.reshape(-1, 1) + logprobs).reshape(batch, beams * vocab)
        top_scores, top_index = cand.topk(2 * beams, dim=1)
        top_beam, top_token = top_index // vocab, top_index % vocab
        next_scores = beam_scores.clone()
        next_token = torch.full((batch, beams), pad_token_id, dtype=torch.long, device=device)
        next_beam = torch.arange(beams, device=device).repeat(batch, 1)
        gen_len = step + 1
        scores_list, beam_list, token_list = top_scores.tolist(), top_beam.tolist(), top_token.tolist()
        for b in range(batch):
            if done[b]:
                continue
            slot = 0
            for rank in range(2 * beams):
                score, beam, token = scores_list[b][rank], beam_list[b][rank], token_list[b][rank]
                if token == eos_token_id:
                    if rank < beams:
                        tokens = seqs[b * beams + beam, 1:].tolist() + [eos_token_id]
                        closed[b].append((score / gen_len**length_penalty, tokens))
                    continue
                next_scores[b, slot], next_beam[b, slot], next_token[b, slot] = score, beam, token
                slot += 1
                if slot == beams:
                    break
            if len(closed[b]) >= beams:
                closed[b] = sorted(closed[b], key=lambda hyp: hyp[0], reverse=True)[:beams]
                best_open = float(next_scores[b].max()) / gen_len**length_penalty
                done[b] = closed[b][-1][0] >= best_open
        if all(done):
            break
        index = (offsets + next_beam).reshape(-1)
        seqs = torch.cat([seqs[index], next_token.reshape(-1, 1)], dim=1)
        beam_scores = next_scores
        if cache is not None:
            cache.reorder(index)

    cur_len = seqs.shape[1] - 1
    best_rows: list[list[int]] = []
    for b in range(batch):
        hyps = list(closed[b])
        if not done[b]:
            for k in range(beams):
                score = float(beam_scores[b, k])
                if score != float('-inf'):
                    hyps.append((score / max(cur_len, 1) ** length_penalty, seqs[b * beams + k, 1:].tolist()))
        best = max(hyps, key=lambda hyp: hyp[0])[1] if hyps else []
        best_rows.append([bos_token_id, *best])
    return _pad_rows(best_rows, pad_token_id, device)


def generate(
    decoder,
    img_ctx: Tensor,
    *,
    method: str = 'greedy',
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    max_len: int = 30,
    min_len: int = 0,
    beam_size: int = 4,
    length_penalty: float = 1.0,
    img_mask: Tensor | None = None,
    use_cache: bool = True,
    prefix_ids: Tensor | None = None,
    prefix_lengths: Tensor | None = None,
) -> Tensor:
    """Dispatch to :func:`greedy_search` (``method='greedy'``) or :func:`beam_search` (``'beam'``).

    A forced prompt (``prefix_ids``, ``prefix_lengths``) is supported by greedy search only.
    """
    special = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    if method == 'greedy':
        return greedy_search(
            decoder,
            img_ctx,
            max_len=max_len,
            min_len=min_len,
            img_mask=img_mask,
            use_cache=use_cache,
            prefix_ids=prefix_ids,
            prefix_lengths=prefix_lengths,
            **special,
        )
    if prefix_ids is not None:
        raise ValueError(f"a prompt prefix needs method='greedy', got {method!r}")
    if method == 'beam':
        return beam_search(
            decoder,
            img_ctx,
            beam_size=beam_size,
            max_len=max_len,
            min_len=min_len,
            length_penalty=length_penalty,
            img_mask=img_mask,
            use_cache=use_cache,
            **special,
        )
    raise ValueError(f"generation method must be 'greedy' or 'beam', got {method!r}")
