"""FIBER's coarse-grained pretraining losses: image-text matching with hard negatives, masked language
modelling.

Paper: Dou et al., "Coarse-to-Fine Vision-Language Pre-training with Fusion in the Backbone" (FIBER), NeurIPS
2022, Sec. 3.2: coarse-grained pre-training with image-text contrastive (ITC), image-text matching (ITM) and
masked language modelling (MLM) losses. ITC is :class:`~pretrain.models.losses.InfoNCELoss` (symmetric softmax
cross-entropy, embeddings gathered across processes with gradients); this file adds the other two.

* ITM hard negatives follow ALBEF (Li et al., NeurIPS 2021, Sec. 3.2), as FIBER's ``compute_itc`` /
  ``compute_itm_hardneg`` do: for every image one negative caption is drawn from the batch with probability
  ``softmax`` of its ITC logits, and for every caption one negative image the same way
  (:func:`sample_hard_negatives`); :class:`ITMLoss` is the cross-entropy of the 2-way matching head.
* MLM masking follows BERT (Devlin et al., NAACL 2019, Sec. 3.1): 15 % of the real tokens are chosen; of those
  80 % become the mask token, 10 % a random token, 10 % stay; the loss covers the chosen tokens only
  (:class:`MLMLoss`).

What differs from FIBER: negatives come from the local batch only (FIBER also draws from a queue of the last
4096 samples); every caption of the same image, not just the diagonal, is excluded from the candidates (by
image id), and a sample left without any candidate drops out of the ITM loss; the random MLM replacement never
draws a special token (BOS, EOS, padding, the mask token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.registry import MODELS

from .losses import global_mean

__all__ = ['HardNegatives', 'ITMLoss', 'MLMLoss', 'same_image_mask', 'sample_hard_negatives']


class HardNegatives(NamedTuple):
    """Indices into the batch: ``txt_for_img`` (B,) a negative caption per image, ``img_for_txt`` (B,) a
    negative image per caption; ``img_valid`` / ``txt_valid`` (B,) bool, False where no candidate existed (the
    index is then meaningless and the pair must be skipped)."""

    txt_for_img: Tensor
    img_for_txt: Tensor
    img_valid: Tensor
    txt_valid: Tensor


def same_image_mask(img_ids: Tensor) -> Tensor:
    """``img_ids`` (B,) -> (B, B) bool, True where samples i and j show the same image (diagonal included)."""
    if img_ids.dim() != 1:
        raise ValueError(f'img_ids must be (B,), got {tuple(img_ids.shape)}')
    return img_ids[:, None] == img_ids[None, :]


def _draw(logits: Tensor, allowed: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """One column per row, drawn with probability ``softmax(logits)`` renormalised over ``allowed``."""
    valid = allowed.any(dim=1)
    masked = logits.float().masked_fill(~allowed, float('-inf'))
    masked[~valid] = 0.0  # a row without candidates draws anything; the caller skips it
    probs = masked.softmax(dim=1)  # exp(-inf) = 0: a forbidden entry has probability exactly 0
    index = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return index, valid


@torch.no_grad()
def sample_hard_negatives(
    logits_i2t: Tensor,
    img_ids: Tensor,
    *,
    logits_t2i: Tensor | None = None,
    candidate_img_ids: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> HardNegatives:
    """ALBEF's hard negatives: a caption per image and an image per caption, drawn with probability
    softmax(ITC logits) among the candidates that do not show the same image.

    Args:
        logits_i2t: (B, C) scaled image-to-caption similarities (row i: local image i, column j: candidate
            caption j). Without ``candidate_img_ids`` the candidates are the local batch (C = B) and the
            caption-to-image logits are its transpose.
        img_ids: (B,) image id of every local sample; a caption is never a negative of an image with its id,
            so neither the pair itself nor another caption of the same image is ever drawn.
        logits_t2i: (B, C) caption-to-image logits of the local captions against the candidate images; needed
            with ``candidate_img_ids``.
        candidate_img_ids: (C,) image ids of the candidates, e.g. the batch gathered from all processes
            (ALBEF's global hard negatives); the returned indices then index the candidates.
        generator: optional RNG for the draws (torch's global RNG otherwise).
    """
    if logits_i2t.dim() != 2 or logits_i2t.shape[0] != img_ids.shape[0] or img_ids.dim() != 1:
        raise ValueError(
            f'logits_i2t must be (B, C) with img_ids (B,), got {tuple(logits_i2t.shape)}, '
            f'{tuple(img_ids.shape)}'
        )
    img_ids = img_ids.to(logits_i2t.device)
    if candidate_img_ids is None:
        if logits_i2t.shape[0] != logits_i2t.shape[1]:
            raise ValueError(f'logits_i2t must be (B, B) for the local batch, got {tuple(logits_i2t.shape)}')
        allowed = ~same_image_mask(img_ids)
        logits_t2i = logits_i2t.t()
    else:
        if logits_t2i is None or logits_t2i.shape != logits_i2t.shape:
            raise ValueError('candidate_img_ids needs logits_t2i of the same shape as logits_i2t')
        if candidate_img_ids.shape != (logits_i2t.shape[1],):
            raise ValueError(
                f'candidate_img_ids {tuple(candidate_img_ids.shape)} does not match '
                f'{logits_i2t.shape[1]} columns'
            )
        allowed = img_ids[:, None] != candidate_img_ids.to(logits_i2t.device)[None, :]
    txt_for_img, img_valid = _draw(logits_i2t, allowed, generator)
    img_for_txt, txt_valid = _draw(logits_t2i, allowed, generator)
    return HardNegatives(txt_for_img, img_for_txt, img_valid, txt_valid)


@MODELS.register_module()
class ITMLoss(nn.Module):
    """Cross-entropy of the 2-way image-text matching head (class 1 = the caption matches the image), averaged
    over the pairs of all processes (:func:`~pretrain.models.losses.global_mean`).

    Args:
        loss_weight: multiplier of the returned loss.

    ``forward(logits (P, 2), labels (P,) in {0, 1})`` -> scalar.
    """

    def __init__(self, *, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        if logits.dim() != 2 or logits.shape[1] != 2 or labels.shape != logits.shape[:1]:
            raise ValueError(
                f'ITMLoss expects logits (P, 2) and labels (P,), got {logits.shape}, {labels.shape}'
            )
        total = F.cross_entropy(logits.float(), labels.long(), reduction='sum')
        return self.loss_weight * global_mean(total, len(labels))


@MODELS.register_module()
class MLMLoss(nn.Module):
    """BERT masking of caption tokens and the cross-entropy of predicting the chosen ones.

    Args:
        mask_prob: fraction of the maskable tokens chosen for prediction (BERT, FIBER: 0.15).
        mask_token_prob: fraction of the chosen tokens replaced by the mask token (0.8).
        random_token_prob: fraction of the chosen tokens replaced by a random non-special token (0.1); the
            rest stay unchanged.
        ignore_index: label of the positions that are not predicted.
        loss_weight: multiplier of the returned loss.

    :meth:`mask_tokens` corrupts ids and returns the labels; ``forward(logits (..., V), labels (...))`` -> the
    mean cross-entropy over labels != ``ignore_index`` of all processes
    (:func:`~pretrain.models.losses.global_mean`; 0 with a gradient when there is none).
    """

    def __init__(
        self,
        *,
        mask_prob: float = 0.15,
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
        ignore_index: int = -100,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f'MLMLoss: mask_prob must be in (0, 1], got {mask_prob}')
        if mask_token_prob < 0 or random_token_prob < 0 or mask_token_prob + random_token_prob > 1.0:
            raise ValueError(
                'MLMLoss: mask_token_prob and random_token_prob must be >= 0 with a sum <= 1, got '
                f'{mask_token_prob} and {random_token_prob}'
            )
        self.mask_prob = mask_prob
        self.mask_token_prob = mask_token_prob
        self.random_token_prob = random_token_prob
        self.ignore_index = ignore_index
        self.loss_weight = loss_weight

    @torch.no_grad()
    def mask_tokens(
        self,
        txt_ids: Tensor,
        maskable: Tensor,
        *,
        mask_token_id: int,
        vocab_size: int,
        special_ids: Sequence[int] = (),
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Corrupt ``txt_ids`` (B, L) at chosen positions of ``maskable`` (B, L) bool (real tokens, no
        BOS/EOS).

        Returns ``masked_ids`` (B, L) and ``labels`` (B, L): the original id where a token was chosen,
        ``ignore_index`` elsewhere. Random replacements are drawn uniformly from the ids in
        ``[0, vocab_size)`` that are neither in ``special_ids`` nor the mask token.
        """
        if txt_ids.shape != maskable.shape:
            raise ValueError(f'txt_ids {tuple(txt_ids.shape)} and maskable {tuple(maskable.shape)} differ')
        device = txt_ids.device

        def uniform() -> Tensor:
            return torch.rand(txt_ids.shape, generator=generator, device=device)

        chosen = (uniform() < self.mask_prob) & maskable.bool()
        action = uniform()
        to_mask = chosen & (action < self.mask_token_prob)
        to_random = chosen & ~to_mask & (action < self.mask_token_prob + self.random_token_prob)
        forbidden = torch.tensor([*special_ids, mask_token_id], dtype=torch.long, device=device)
        candidates = torch.arange(vocab_size, device=device)
        candidates = candidates[~torch.isin(candidates, forbidden)]
        if len(candidates) == 0:
            raise ValueError('MLMLoss: no ordinary token left to draw random replacements from')
        pick = torch.randint(len(candidates), txt_ids.shape, generator=generator, device=device)
        masked_ids = torch.where(to_mask, torch.full_like(txt_ids, mask_token_id), txt_ids)
        masked_ids = torch.where(to_random, candidates[pick], masked_ids)
        labels = torch.where(chosen, txt_ids, torch.full_like(txt_ids, self.ignore_index))
        return masked_ids, labels

    def mask_captions(
        self, txt_ids: Tensor, txt_mask: Tensor, *, mask_token_id: int, vocab_size: int, tokenizer: Any
    ) -> tuple[Tensor, Tensor]:
        """:meth:`mask_tokens` on tokenized captions ``[BOS] tokens [EOS] pad...``: only the tokens between
        BOS and EOS can be chosen, and random replacements are never the tokenizer's BOS, EOS or padding."""
        lengths = txt_mask.sum(dim=1, keepdim=True)
        positions = torch.arange(txt_ids.shape[1], device=txt_ids.device)[None]
        maskable = (positions >= 1) & (positions < lengths - 1)
        specials = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        return self.mask_tokens(
            txt_ids, maskable, mask_token_id=mask_token_id, vocab_size=vocab_size, special_ids=specials
        )

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        if logits.shape[:-1] != labels.shape:
            raise ValueError(
                f'MLMLoss: logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}'
            )
        total = F.cross_entropy(  # 0 (with a graph) when no label is chosen
            logits.reshape(-1, logits.shape[-1]).float(),
            labels.reshape(-1),
            ignore_index=self.ignore_index,
            reduction='sum',
        )
        return self.loss_weight * global_mean(total, (labels != self.ignore_index).sum())
