"""ALBEF's feature queues and momentum-distilled losses.

Paper: Li et al., "Align before Fuse: Vision and Language Representation Learning with Momentum
Distillation" (ALBEF), NeurIPS 2021, Sec. 3.2 (ITC against queues of momentum features, Eq. 1-2) and Sec. 3.3
(momentum distillation, Eq. 4-5). Reference code: salesforce/ALBEF ``models/model_pretrain.py``.

* :class:`FeatureQueue`: a FIFO ring of L2-normalised momentum features with the image id of each entry. ALBEF
  fills its queues with random features at start-up and lets them act as negatives; here entries not yet
  written are excluded from the logits (``valid``), so the first steps only contrast real features.
* :class:`DistilledContrastiveLoss`: ITC where each row's target is ``(1 - alpha) * y + alpha * q``, with
  ``y`` uniform over the positives (every key showing the query's image: the pair itself, other captions of
  the image in the batch or the queue) and ``q`` the momentum model's softmax over the same keys (Eq. 4).
* :func:`soft_cross_entropy`: ``-sum(target * log_softmax(logits))`` per row, the distillation term of the MLM
  loss too (Eq. 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.registry import MODELS

__all__ = ['DistilledContrastiveLoss', 'FeatureQueue', 'distilled_targets', 'soft_cross_entropy']


class FeatureQueue(nn.Module):
    """A ring buffer of ``size`` features (``dim`` wide) and their image ids, saved with the checkpoint.

    ``enqueue(feats (n, dim), ids (n,))`` writes the newest entries after the last ones, wrapping around and
    overwriting the oldest; ``n > size`` keeps the last ``size``. :attr:`valid` (size,) marks entries written
    at least once. ``size = 0`` is an empty queue (in-batch contrast only).
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f'queue size must be >= 0, got {size}')
        self.size = int(size)
        self.register_buffer('feats', torch.zeros(size, dim))
        self.register_buffer('ids', torch.full((size,), -1, dtype=torch.long))
        self.register_buffer('ptr', torch.zeros((), dtype=torch.long))
        self.register_buffer('count', torch.zeros((), dtype=torch.long))

    @property
    def valid(self) -> Tensor:
        return torch.arange(self.size, device=self.feats.device) < self.count

    @torch.no_grad()
    def enqueue(self, feats: Tensor, ids: Tensor) -> None:
        if not self.size:
            return
        if feats.dim() != 2 or feats.shape[1] != self.feats.shape[1] or ids.shape != feats.shape[:1]:
            raise ValueError(
                f'enqueue expects feats (n, {self.feats.shape[1]}) and ids (n,), got '
                f'{tuple(feats.shape)} and {tuple(ids.shape)}'
            )
        feats, ids = feats[-self.size :], ids[-self.size :]
        slots = (self.ptr + torch.arange(len(feats), device=feats.device)) % self.size
        self.feats[slots] = feats.detach().to(self.feats.dtype)
        self.ids[slots] = ids.to(self.ids.device)
        self.ptr.copy_((self.ptr + len(feats)) % self.size)
        self.count.copy_(torch.clamp(self.count + len(feats), max=self.size))

    def extra_repr(self) -> str:
        return f'size={self.size}, dim={self.feats.shape[1]}'


def soft_cross_entropy(logits: Tensor, targets: Tensor, reduction: str = 'mean') -> Tensor:
    """Per-row soft cross-entropy ``-sum_j targets[i, j] * log_softmax(logits)[i, j]``, averaged over the rows
    (``reduction='mean'``) or summed (``'sum'``); ``logits``, ``targets`` (P, K).

    Keys with ``-inf`` logits (masked out) must have zero target."""
    if reduction not in ('mean', 'sum'):
        raise ValueError(f"soft_cross_entropy: reduction must be 'mean' or 'sum', got {reduction!r}")
    log_probs = F.log_softmax(logits.float(), dim=-1)
    per_row = -(targets.float() * log_probs.masked_fill(targets == 0, 0.0)).sum(dim=-1)
    return per_row.mean() if reduction == 'mean' else per_row.sum()


def distilled_targets(positives: Tensor, logits_m: Tensor | None, alpha: float) -> Tensor:
    """ALBEF Eq. 4: ``(1 - alpha) * positives / #positives + alpha * softmax(logits_m)`` per row.

    ``positives`` (P, K) bool, at least one per row; ``logits_m`` (P, K) the momentum model's logits over the
    same keys (``-inf`` where masked), or ``None`` for the hard targets alone.
    """
    hard = positives.float() / positives.float().sum(dim=-1, keepdim=True).clamp(min=1.0)
    if logits_m is None or alpha == 0.0:
        return hard
    return (1.0 - alpha) * hard + alpha * F.softmax(logits_m.float(), dim=-1)


@MODELS.register_module()
class DistilledContrastiveLoss(nn.Module):
    """Image-text contrastive loss against soft targets (ALBEF Eq. 1-4): the mean of both directions.

    Args:
        loss_weight: multiplier of the returned loss.

    ``forward(logits_i2t (B, K_t), logits_t2i (B, K_i), pos_i2t (B, K_t) bool, pos_t2i (B, K_i) bool,
    logits_i2t_m=None, logits_t2i_m=None, alpha=0.0)`` -> scalar. Rows are the local queries; the keys are the
    momentum features of the (global) batch followed by the queue. ``-inf`` logits mark excluded keys.
    """

    def __init__(self, *, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(
        self,
        logits_i2t: Tensor,
        logits_t2i: Tensor,
        pos_i2t: Tensor,
        pos_t2i: Tensor,
        logits_i2t_m: Tensor | None = None,
        logits_t2i_m: Tensor | None = None,
        alpha: float = 0.0,
    ) -> Tensor:
        if not pos_i2t.any(dim=1).all() or not pos_t2i.any(dim=1).all():
            raise ValueError('every query needs at least one positive key (its own pair)')
        loss_i2t = soft_cross_entropy(logits_i2t, distilled_targets(pos_i2t, logits_i2t_m, alpha))
        loss_t2i = soft_cross_entropy(logits_t2i, distilled_targets(pos_t2i, logits_t2i_m, alpha))
        return self.loss_weight * (loss_i2t + loss_t2i) / 2
