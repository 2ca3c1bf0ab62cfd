"""Losses of MaMMUT pretraining: focal contrastive, InfoNCE and caption cross-entropy.

Papers: Kim et al., "RO-ViT", CVPR 2023, Sec. 3.2 (focal contrastive loss: a sigmoid focal loss over every
image-text pair of the batch, positives on the diagonal); Radford et al., "CLIP", ICML 2021 (symmetric softmax
InfoNCE); Kuo et al., "MaMMUT", TMLR 2023, Sec. 3 (contrastive + captioning losses).

Contrastive losses take L2-normalised ``img_emb`` (B, E) and ``txt_emb`` (B, E) plus the (exponentiated)
``logit_scale`` and, for the sigmoid form, ``logit_bias``; the learned scale/bias live in the model. When
``torch.distributed`` runs with world_size > 1 the embeddings of all processes are gathered WITH gradients
(``torch.distributed.nn.functional.all_gather``) and each process scores its B local rows against the B_global
columns, positives at column ``rank * B + i`` (all processes must use the same local batch size).

Focal contrastive normalisation (our choice, as SigLIP): the focal terms of all B x B_global pairs are summed
and divided by the local batch size B; the image-to-text and text-to-image losses are averaged. RO-ViT's
equation has no class-balance weight; ``alpha`` (RetinaNet convention: weight ``alpha`` on positives and
``1 - alpha`` on negatives) is optional and off (``None``) by default.

Token-level losses (captioning here, MLM / ITM / MDM elsewhere) average over the tokens of the GLOBAL batch
(:func:`global_mean`): a per-process mean would weigh a process with few tokens as much as one with many, so
W processes with B / W samples each would not train (or log) what one process with B samples does. DDP
averages gradients over processes; :func:`global_mean` gives each process the gradient of
``W * local_sum / global_count``, so that the average is that of ``global_sum / global_count``, and logs the
global mean itself. Like the gathers, it is a collective: every process must call the loss the same number of
times per step (it does whatever its batch holds; an empty batch adds 0 / 0 items).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.distributed import gather_with_grad, world_info
from toolkit.registry import MODELS

__all__ = [
    'CaptionCrossEntropyLoss',
    'FocalContrastiveLoss',
    'InfoNCELoss',
    'contrastive_logits',
    'global_mean',
    'sigmoid_focal_loss',
]


def global_mean(total: Tensor, count: Tensor | int) -> Tensor:
    """A mean over the items of all processes, with this process's share of its gradient.

    ``total`` is the (differentiable) sum of a loss over this process's ``count`` items. With one process this
    is ``total / count``. With W, the value is the global mean ``sum(total) / sum(count)`` on every process
    (what is logged), and the gradient that of ``W * total / sum(count)``: DDP averages the W gradients into
    the gradient of the global mean, as one process with the whole batch would compute it. A zero count gives
    0 (with a graph), not NaN.
    """
    _, world_size = world_info()
    count = torch.as_tensor(count, dtype=torch.float32, device=total.device).detach()
    if world_size == 1:
        return total / count.clamp(min=1.0)
    stats = torch.stack([total.detach().float(), count])
    dist.all_reduce(stats)
    denominator = stats[1].clamp(min=1.0)
    share = total * world_size / denominator
    return share + (stats[0] / denominator - share).detach()


def contrastive_logits(
    img_emb: Tensor,
    txt_emb: Tensor,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float | None = None,
    neg_txt_emb: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Local-vs-global logits in float32.

    Returns ``logits_i2t`` (B, B_global [+ B_global]), ``logits_t2i`` (B, B_global) and the positive column
    of each row ``labels`` (B,) = ``rank * B + arange(B)``. Hard negative texts ``neg_txt_emb`` (B, E), one
    per image (NegCLIP), are extra negative columns of every image's row, after the captions.
    """
    rank, _ = world_info()
    img_emb, txt_emb = img_emb.float(), txt_emb.float()
    img_all, txt_all = gather_with_grad(img_emb), gather_with_grad(txt_emb)
    if neg_txt_emb is not None:
        txt_all = torch.cat([txt_all, gather_with_grad(neg_txt_emb.float())])
    with torch.autocast(device_type=img_emb.device.type, enabled=False):
        scale = logit_scale.float() if isinstance(logit_scale, Tensor) else logit_scale
        logits_i2t = scale * img_emb @ txt_all.t()
        logits_t2i = scale * txt_emb @ img_all.t()
        if logit_bias is not None:
            bias = logit_bias.float() if isinstance(logit_bias, Tensor) else logit_bias
            logits_i2t = logits_i2t + bias
            logits_t2i = logits_t2i + bias
    labels = torch.arange(img_emb.shape[0], device=img_emb.device) + rank * img_emb.shape[0]
    return logits_i2t, logits_t2i, labels


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, *, alpha: float | None = None, gamma: float = 2.0
) -> Tensor:
    """Element-wise sigmoid focal loss ``-alpha_t (1 - p_t)^gamma log p_t``, computed in float32.

    Uses ``log p_t = logsigmoid(s * x)`` and ``(1 - p_t)^gamma = exp(gamma * logsigmoid(-s * x))`` with
    ``s = 2 * target - 1``, so it is finite for any finite logit (e.g. +-1e4) and under bf16 autocast.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits, targets = logits.float(), targets.float()
        sign = 2.0 * targets - 1.0
        log_pt = F.logsigmoid(sign * logits)
        loss = -log_pt
        if gamma != 0:
            loss = loss * torch.exp(gamma * F.logsigmoid(-sign * logits))
        if alpha is not None:
            loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
        return loss


@MODELS.register_module()
class FocalContrastiveLoss(nn.Module):
    """RO-ViT's focal contrastive loss: sigmoid focal loss over all pairs, identity positives.

    Args:
        alpha: class-balance weight on positives (``1 - alpha`` on negatives); ``None`` for none.
        gamma: focusing parameter; ``gamma=0, alpha=None`` is the plain sigmoid (SigLIP) loss.
        loss_weight: multiplier of the returned loss.

    ``forward(img_emb (B, E), txt_emb (B, E), logit_scale, logit_bias, neg_txt_emb=None)`` -> scalar; hard
    negative texts (B, E) add negative columns to the image-to-text rows.
    """

    uses_bias = True

    def __init__(self, *, alpha: float | None = None, gamma: float = 2.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f'alpha must be in [0, 1] or None, got {alpha}')
        self.alpha = alpha
        self.gamma = gamma
        self.loss_weight = loss_weight

    def loss_from_logits(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Focal loss of ``logits`` (B, B_global) with one positive per row at ``labels`` (B,), sum / B."""
        targets = F.one_hot(labels, logits.shape[1]).to(torch.float32)
        return sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma).sum() / logits.shape[0]

    def forward(
        self,
        img_emb: Tensor,
        txt_emb: Tensor,
        logit_scale: Tensor | float,
        logit_bias: Tensor | float | None = None,
        neg_txt_emb: Tensor | None = None,
    ) -> Tensor:
        logits_i2t, logits_t2i, labels = contrastive_logits(
            img_emb, txt_emb, logit_scale, logit_bias, neg_txt_emb
        )
        loss = 0.5 * (self.loss_from_logits(logits_i2t, labels) + self.loss_from_logits(logits_t2i, labels))
        return self.loss_weight * loss


@MODELS.register_module()
class InfoNCELoss(nn.Module):
    """Symmetric softmax cross-entropy over image-text similarities (CLIP).

    ``forward(img_emb (B, E), txt_emb (B, E), logit_scale, logit_bias=None, neg_txt_emb=None)`` -> scalar; a
    bias would cancel in the softmax and is ignored; hard negative texts add image-to-text columns.
    """

    uses_bias = False

    def __init__(self, *, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(
        self,
        img_emb: Tensor,
        txt_emb: Tensor,
        logit_scale: Tensor | float,
        logit_bias: Tensor | float | None = None,
        neg_txt_emb: Tensor | None = None,
    ) -> Tensor:
        logits_i2t, logits_t2i, labels = contrastive_logits(img_emb, txt_emb, logit_scale, None, neg_txt_emb)
        loss = 0.5 * (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels))
        return self.loss_weight * loss


@MODELS.register_module()
class CaptionCrossEntropyLoss(nn.Module):
    """Token cross-entropy of the captioning pass, averaged over the non-ignored target tokens of the global
    batch (:func:`global_mean`).

    Args:
        label_smoothing: as in ``F.cross_entropy``.
        ignore_index: target value of positions to skip (padding after EOS).
        loss_weight: multiplier of the returned loss.

    ``forward(logits (B, L, V), targets (B, L))`` -> scalar (0 with a gradient if every target is ignored).
    """

    def __init__(
        self, *, label_smoothing: float = 0.0, ignore_index: int = -100, loss_weight: float = 1.0
    ) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index
        self.loss_weight = loss_weight

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        total = F.cross_entropy(  # 0 (with a graph) when every target is ignored
            logits.flatten(0, 1).float(),
            targets.flatten(),
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction='sum',
        )
        return self.loss_weight * global_mean(total, (targets != self.ignore_index).sum())
