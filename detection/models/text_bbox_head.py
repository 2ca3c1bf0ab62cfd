"""RoI box head whose classifier is a set of text embeddings: open-vocabulary Faster R-CNN classification.

Papers: Gu et al., "Open-vocabulary Object Detection via Vision and Language Knowledge Distillation" (ViLD),
ICLR 2022, Sec. 3.2 (ViLD-text: region embeddings scored by cosine similarity against category text
embeddings and a learned background embedding, with a temperature); Kim et al., "Region-Aware Pretraining for
Open-Vocabulary Object Detection with Vision Transformers" (RO-ViT), CVPR 2023, Sec. 3.3 (the same
classifier trained with focal loss, and the score ensemble with the pretrained model's region embeddings);
Kuo et al., MaMMUT, TMLR 2023, Sec. 4.3 (RO-ViT's detector on the MaMMUT encoder).

The head is mmdet's ``Shared2FCBBoxHead`` with class-agnostic regression; its ``fc_cls`` projects the region
feature to the joint embedding space (E) instead of predicting fixed classes. The vocabulary is set per batch
with :meth:`TextEmbeddingBBoxHead.set_vocabulary` (C text embeddings, (C, E)): logits are
``exp(logit_scale) * cos(region, [text_1 .. text_C, background])``, background last as in mmdet. Training
sees only the vocabulary the detector gives it (base names).

What differs from ViLD/RO-ViT: the temperature is learned (ViLD: fixed 0.01); the focal loss is the softmax
(multi-class) form over the C + 1 columns (:class:`SoftmaxFocalLoss`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from mmdet.models.layers import multiclass_nms
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead
from mmdet.structures.bbox import get_box_tensor, scale_boxes
from mmengine.structures import InstanceData
from torch import Tensor, nn

from toolkit.registry import MODELS

__all__ = ['SoftmaxFocalLoss', 'TextEmbeddingBBoxHead']


@MODELS.register_module()
class SoftmaxFocalLoss(nn.Module):
    """Multi-class focal loss ``-(1 - p_t)^gamma log p_t`` over softmax probabilities (Lin et al. 2017).

    Args:
        gamma: focusing parameter (0 gives cross-entropy).
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: multiplier of the loss.

    Call: ``cls_score`` (N, K) logits, ``label`` (N,) in [0, K), optional ``weight`` (N,) and ``avg_factor``
    (mmdet's loss signature).
    """

    def __init__(self, *, gamma: float = 2.0, reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f'SoftmaxFocalLoss: gamma must be >= 0, got {gamma}')
        self.gamma = float(gamma)
        self.reduction = reduction
        self.loss_weight = float(loss_weight)

    def forward(
        self,
        cls_score: Tensor,
        label: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        reduction = reduction_override or self.reduction
        log_prob = F.log_softmax(cls_score.float(), dim=-1).gather(1, label[:, None].long())[:, 0]
        loss = -((1.0 - log_prob.exp()).clamp(min=0) ** self.gamma) * log_prob
        if weight is not None:
            weight = weight.float()
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)


@MODELS.register_module()
class TextEmbeddingBBoxHead(Shared2FCBBoxHead):
    """Two shared FCs, class-agnostic box deltas and a text-embedding classifier with a background embedding.

    Args:
        embed_dim: E, the joint image-text embedding size (the text embeddings' size).
        logit_scale_init: initial ``exp(logit_scale)`` (inverse temperature); learned, clamped at
            ``logit_scale_max``.
        logit_scale_max: upper clamp of the scale.
        text_whitening: whiten the text embeddings with the statistics of the first vocabulary the head is
            given (in training: the base names), ``(t - mean) @ W`` re-normalised,
            ``W = (cov + eps I)^-1/2`` with ``eps = text_whitening x`` the top eigenvalue; ``None``: off. The
            statistics are buffers (saved with the model) and are never refitted, so novel names go through
            the base names' map. For a weak text model whose name embeddings spread over few directions (the
            tiny Shapes World MaMMUT: colour spans the top 5 directions, shape the next ~10 at 1-10 % of the
            top singular value), it puts every direction the base names vary along on an equal footing. Off
            in RO-ViT.
        text_adapter: learn a residual linear map of the text embeddings, ``t + W t`` re-normalised, with
            ``W`` starting at zero (weight decay pulls it back to the identity map). For a weak text model
            whose name embeddings differ by little (the tiny Shapes World MaMMUT: same-colour names at cosine
            0.97-0.999), it can stretch the directions that tell base names apart; being one linear map, it
            applies to novel names too. Off in RO-ViT (frozen text embeddings).
        kwargs: ``Shared2FCBBoxHead``'s (``in_channels``, ``fc_out_channels``, ``roi_feat_size``,
            ``bbox_coder``, ``loss_cls``, ``loss_bbox``...). ``num_classes`` is not an argument: it is the
            size of the current vocabulary. ``reg_class_agnostic`` defaults to True.

    Shapes: RoI features (K, in_channels, S, S) -> ``cls_score`` (K, C + 1), ``bbox_pred`` (K, 4).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        logit_scale_init: float = 20.0,
        logit_scale_max: float = 100.0,
        text_whitening: float | None = None,
        text_adapter: bool = False,
        **kwargs: Any,
    ) -> None:
        if 'num_classes' in kwargs:
            raise ValueError('TextEmbeddingBBoxHead: num_classes follows the vocabulary; do not set it')
        kwargs.setdefault('reg_class_agnostic', True)
        super().__init__(num_classes=1, **kwargs)
        if not self.with_cls:
            raise ValueError('TextEmbeddingBBoxHead needs with_cls=True')
        self.embed_dim = int(embed_dim)
        self.fc_cls = nn.Linear(self.cls_last_dim, self.embed_dim)  # region feature -> joint space
        self.bg_embedding = nn.Parameter(torch.randn(self.embed_dim) / math.sqrt(self.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        self.logit_scale_max = float(logit_scale_max)
        if text_whitening is not None and not text_whitening > 0:
            raise ValueError(
                f'TextEmbeddingBBoxHead: text_whitening must be > 0 or None, got {text_whitening}'
            )
        self.text_whitening = text_whitening
        self.register_buffer('txt_mean', torch.zeros(self.embed_dim))
        self.register_buffer('txt_whiten', torch.eye(self.embed_dim))
        self.register_buffer('whitening_fitted', torch.tensor(False))
        self.text_adapter: nn.Linear | None = None
        if text_adapter:
            self.text_adapter = nn.Linear(self.embed_dim, self.embed_dim, bias=False)
        self.class_embeddings: Tensor | None = None
        self.num_classes = 0

    def set_vocabulary(self, txt_emb: Tensor) -> None:
        """Use ``txt_emb`` (C, E), L2-normalised, as the classes of the following calls (and fit the
        whitening on it if that is on and not fitted yet)."""
        if txt_emb.dim() != 2 or txt_emb.shape[1] != self.embed_dim:
            raise ValueError(
                f'TextEmbeddingBBoxHead: text embeddings must be (C, {self.embed_dim}), '
                f'got {tuple(txt_emb.shape)}'
            )
        if self.text_whitening is not None and not bool(self.whitening_fitted):
            self.fit_text_whitening(txt_emb)
        self.class_embeddings = txt_emb
        self.num_classes = int(txt_emb.shape[0])

    @torch.no_grad()
    def fit_text_whitening(self, txt_emb: Tensor) -> None:
        """Whitening statistics of ``txt_emb`` (C, E): its mean and ``(cov + eps I)^-1/2``."""
        if txt_emb.shape[0] < 2:
            raise ValueError('TextEmbeddingBBoxHead: text whitening needs at least two names to fit on')
        emb = txt_emb.double()
        mean = emb.mean(dim=0)
        cov = (emb - mean).t() @ (emb - mean) / emb.shape[0]
        eigvals, eigvecs = torch.linalg.eigh(cov)
        eps = float(self.text_whitening or 0.0) * float(eigvals.max())
        whiten = eigvecs @ torch.diag((eigvals.clamp(min=0) + eps).rsqrt()) @ eigvecs.t()
        self.txt_mean.copy_(mean.to(self.txt_mean))
        self.txt_whiten.copy_(whiten.to(self.txt_whiten))
        self.whitening_fitted.fill_(True)

    def init_weights(self) -> None:
        super().init_weights()
        if self.text_adapter is not None:
            nn.init.zeros_(self.text_adapter.weight)  # the identity map at the start

    def classes(self, dtype_like: Tensor) -> Tensor:
        """The (adapted) class embeddings and the background one, L2-normalised: (C + 1, E)."""
        if self.class_embeddings is None:
            raise RuntimeError('TextEmbeddingBBoxHead: call set_vocabulary(text embeddings) first')
        txt_emb = self.class_embeddings.to(dtype_like)
        if self.text_whitening is not None:
            txt_emb = F.normalize((txt_emb - self.txt_mean.to(txt_emb)) @ self.txt_whiten.to(txt_emb), dim=-1)
        if self.text_adapter is not None:
            txt_emb = F.normalize(txt_emb + self.text_adapter(txt_emb), dim=-1)
        return torch.cat([txt_emb, F.normalize(self.bg_embedding, dim=0)[None].to(dtype_like)])

    def current_logit_scale(self) -> Tensor:
        return self.logit_scale.exp().clamp(max=self.logit_scale_max)

    def region_embedding(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """RoI features -> L2-normalised region embeddings (K, E) and box deltas (K, 4)."""
        region, bbox_pred = super().forward(x)
        return F.normalize(region, dim=-1), bbox_pred

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        region_emb, bbox_pred = self.region_embedding(x)
        cls_score = self.current_logit_scale() * region_emb @ self.classes(region_emb).t()
        return cls_score, bbox_pred

    def predict_from_probs(
        self,
        rois: Sequence[Tensor],
        probs: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        batch_img_metas: Sequence[dict[str, Any]],
        rcnn_test_cfg: Any,
        rescale: bool = True,
    ) -> list[InstanceData]:
        """Detections per image from class probabilities (K, C + 1), background last, and box deltas (K, 4).

        Like mmdet's ``predict_by_feat`` but the scores are given (softmax of the logits, or an ensemble of
        them with other scores): decode, clip, rescale to the original image, per-class NMS.
        """
        results = []
        for image_rois, image_probs, deltas, meta in zip(
            rois, probs, bbox_preds, batch_img_metas, strict=True
        ):
            result = InstanceData()
            if image_rois.shape[0] == 0:
                result.bboxes = image_rois.new_zeros((0, 4))
                result.scores = image_rois.new_zeros((0,))
                result.labels = image_rois.new_zeros((0,), dtype=torch.long)
                results.append(result)
                continue
            boxes = self.bbox_coder.decode(image_rois[:, 1:], deltas, max_shape=meta['img_shape'])
            if rescale:
                boxes = scale_boxes(boxes, [1 / s for s in meta['scale_factor']])
            det_boxes, det_labels = multiclass_nms(
                get_box_tensor(boxes),
                image_probs,
                rcnn_test_cfg.score_thr,
                rcnn_test_cfg.nms,
                rcnn_test_cfg.max_per_img,
            )
            result.bboxes = det_boxes[:, :-1]
            result.scores = det_boxes[:, -1]
            result.labels = det_labels
            results.append(result)
        return results
