"""GLIP's grounding head on DyHead blocks, for a detector whose backbone has already fused image and text.

Papers: GLIP (Li et al., CVPR 2022), Sec. 3.1 eq. (2)-(3): region-word alignment scores
``S_ground = O P^T`` (region features O, token features P) replace the classifier, and the alignment loss is a
sigmoid focal loss over region-token pairs whose targets are the tokens of the category name each region is
assigned to; FIBER (Dou et al., NeurIPS 2022), Sec. 3.2 and its fine-grained code (microsoft/FIBER
``maskrcnn_benchmark/modeling/rpn/vldyhead.py`` with ``EARLY_FUSE_ON: False``): the same DyHead (Dai et al.,
CVPR 2021) + ATSS (Zhang et al., CVPR 2020) head, but no fusion inside the head because the backbone fused.

Reused from mmdet 3.3: :class:`~mmdet.models.dense_heads.ATSSHead` (anchors, ATSS assignment, targets, NMS
post-processing), the DyHead block ``DyConv`` with modulated deformable ``Conv3x3Norm`` of
``mmdet.models.dense_heads.atss_vlfusion_head``, ``filter_scores_and_topk``. The parameter names of the
dot product (``dot_product_projection_text``, ``log_scale``, ``bias_lang``, ``bias0``) and of the tower are
those of mmdet's ``VLFusionModule`` and of FIBER, so their weights map one to one.

What differs from mmdet's ``ATSSVLFusionHead``: the text width is an argument (``lang_dim``), not read with
``BertConfig.from_pretrained``; targets are as wide as the batch's text (not ``feat_channels`` wide) and the
text mask is passed, not kept on the module; no ``-1``/``+1`` box offsets of the official GLIP checkpoints
(ground truth here is ``x + w``); one ``Scale`` per level that exists; at test time the class score is the
mean token probability through the normalised positive map (a matrix product), and the candidates of several
prompt chunks are merged before one NMS (:meth:`merge_candidates`). The modulated deformable convolutions run
in PyTorch by default (:func:`~detection.layers.deform_conv.modulated_deform_conv2d`, equal to mmcv's op,
DyHead's reuse of one level's offsets on the next level included; ``dcn_impl='mmcv'`` runs the compiled op):
device-agnostic, autocast-safe and about 10x faster than mmcv's CPU backward, which took 60 % of a CPU
training step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from einops import rearrange
from mmcv.cnn import Scale
from mmdet.models.dense_heads import ATSSHead
from mmdet.models.dense_heads.atss_vlfusion_head import Conv3x3Norm, DyConv
from mmdet.models.task_modules.prior_generators import anchor_inside_flags
from mmdet.models.utils import filter_scores_and_topk, unmap, unpack_gt_instances
from mmdet.structures import SampleList
from mmdet.structures.bbox import cat_boxes
from mmdet.utils import InstanceList, OptInstanceList, reduce_mean
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from detection.layers.deform_conv import TorchModulatedDeformConv2d
from toolkit.registry import MODELS

__all__ = ['FIBERGroundingHead', 'GroundingDyHead']

MAX_CLAMP_VALUE = 50000.0  # GLIP/FIBER CLAMP_DOT_PRODUCT: keeps fp16 logits finite


def _conv3x3_norm(
    in_channels: int, out_channels: int, stride: int, *, use_dcn: bool, norm_groups: int, dcn_impl: str
) -> nn.Module:
    """mmdet's ``Conv3x3Norm`` (3x3 conv + GroupNorm); its deformable conv optionally run in PyTorch."""
    module = Conv3x3Norm(in_channels, out_channels, stride, use_dcn=use_dcn, norm_type=['gn', norm_groups])
    if use_dcn and dcn_impl == 'torch':
        module.conv = TorchModulatedDeformConv2d(in_channels, out_channels, 3, stride=stride, padding=1)
    return module


class GroundingDyHead(nn.Module):
    """DyHead tower, box/centerness branches and the region-token dot product (GLIP eq. (2)).

    Args:
        in_channels: channels of the neck's maps.
        feat_channels: channels of the tower (and of the region features in the dot product).
        lang_dim: D, the width of the text tokens.
        num_levels: number of pyramid levels (one ``Scale`` each).
        num_blocks: DyHead blocks (FIBER/GLIP: 6).
        use_dyrelu, use_dyfuse, use_dcn: DyHead's dynamic ReLU, scale-aware attention and modulated
            deformable 3x3 convolutions (the first block uses them only when ``in_channels == feat_channels``,
            as mmdet and FIBER).
        norm_groups: GroupNorm groups of the tower.
        prior_prob: initial foreground probability (``bias0``).
        dcn_impl: ``'torch'`` (:func:`modulated_deform_conv2d`) or ``'mmcv'`` (the compiled op); same
            parameters and results.
        with_cp: gradient checkpointing of each DyHead block (training only).

    ``forward(img_feats, txt_tokens (B, L, D), txt_mask (B, L))`` -> ``cls_logits`` per level (B, H*W, L),
    ``bbox_preds`` per level (B, 4, H, W) and ``centernesses`` per level (B, 1, H, W).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        feat_channels: int,
        lang_dim: int,
        num_levels: int,
        num_blocks: int = 6,
        use_dyrelu: bool = True,
        use_dyfuse: bool = True,
        use_dcn: bool = True,
        norm_groups: int = 16,
        prior_prob: float = 0.01,
        dcn_impl: str = 'torch',
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        if dcn_impl not in ('torch', 'mmcv'):
            raise ValueError(f"dcn_impl must be 'torch' or 'mmcv', got {dcn_impl!r}")
        if feat_channels % norm_groups:
            raise ValueError(f'feat_channels={feat_channels} is not divisible by norm_groups={norm_groups}')
        self.with_cp = with_cp
        blocks = []
        for i in range(num_blocks):
            full = i > 0 or in_channels == feat_channels
            dcn = use_dcn and full
            conv = partial(_conv3x3_norm, use_dcn=dcn, norm_groups=norm_groups, dcn_impl=dcn_impl)
            blocks.append(
                DyConv(
                    conv,
                    in_channels if i == 0 else feat_channels,
                    feat_channels,
                    use_dyfuse=use_dyfuse and full,
                    use_dyrelu=use_dyrelu and full,
                    use_dcn=dcn,
                )
            )
        self.dyhead_tower = nn.Sequential(*blocks)
        self.bbox_pred = nn.Conv2d(feat_channels, 4, kernel_size=1)
        self.centerness = nn.Conv2d(feat_channels, 1, kernel_size=1)
        self.dot_product_projection_text = nn.Linear(lang_dim, feat_channels, bias=True)
        self.log_scale = nn.Parameter(torch.zeros(1))
        self.bias_lang = nn.Parameter(torch.zeros(lang_dim))
        self.bias0 = nn.Parameter(torch.full((1,), -math.log((1 - prior_prob) / prior_prob)))
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)])
        for conv in (self.bbox_pred, self.centerness):  # FIBER's initialisation of the two branches
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def _tower(self, img_feats: Sequence[Tensor]) -> list[Tensor]:
        state: dict[str, Any] = {'visual': list(img_feats), 'lang': None}
        for block in self.dyhead_tower:
            if self.with_cp and self.training and torch.is_grad_enabled():
                state = checkpoint(block, state, use_reentrant=False)
            else:
                state = block(state)
        return state['visual']

    def forward(
        self, img_feats: Sequence[Tensor], txt_tokens: Tensor, txt_mask: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        if len(img_feats) != len(self.scales):
            raise ValueError(
                f'GroundingDyHead: {len(img_feats)} feature levels, built for {len(self.scales)}'
            )
        feats = self._tower(img_feats)
        txt = F.normalize(txt_tokens * txt_mask[..., None].to(txt_tokens.dtype), p=2, dim=-1)
        txt_proj = self.dot_product_projection_text(txt / 2.0)  # (B, L, C)
        txt_bias = torch.matmul(txt, self.bias_lang) + self.bias0  # (B, L)
        cls_logits, bbox_preds, centernesses = [], [], []
        for level, feat in enumerate(feats):
            bbox_preds.append(self.scales[level](self.bbox_pred(feat)))
            centernesses.append(self.centerness(feat))
            regions = rearrange(feat, 'b c h w -> b (h w) c')
            logits = torch.matmul(regions, txt_proj.transpose(-1, -2)) / self.log_scale.exp()
            logits = logits + txt_bias[:, None, :]
            cls_logits.append(logits.clamp(min=-MAX_CLAMP_VALUE, max=MAX_CLAMP_VALUE))
        return cls_logits, bbox_preds, centernesses


@MODELS.register_module()
class FIBERGroundingHead(ATSSHead):
    """ATSS head whose classifier is the region-token alignment of :class:`GroundingDyHead`.

    Args:
        in_channels: channels of the neck's maps.
        feat_channels: channels of the DyHead tower.
        lang_dim: width of the text tokens (RoBERTa-base: 768).
        num_dyhead_blocks, use_dyrelu, use_dyfuse, use_dcn, norm_groups, dcn_impl, with_cp: see
            :class:`GroundingDyHead`.
        anchor_generator: one square anchor per location (``ratios=[1.0]``, ``scales_per_octave=1``);
            ``None`` = FIBER's sizes 64-1024 on strides 8-128.
        bbox_coder, loss_cls, loss_bbox, loss_centerness: ``None`` = GLIP's (deltas with stds 0.1/0.2,
            sigmoid focal loss gamma 2 alpha 0.25, GIoU x2, centerness BCE).
        train_cfg: ``assigner`` (ATSS, top-k 9), ``allowed_border``, ``pos_weight``.
        test_cfg: ``nms_pre``, ``score_thr`` (on the name score, before centerness), ``final_score_thr``
            (optional, on the final score), ``nms``, ``max_per_img``, ``min_bbox_size``.
        init_cfg: mmengine init config (the tower and branches initialise themselves at construction).

    Ground truth: each ``gt_instances`` carries ``positive_maps`` (num_gt, L), the tokens of its name in the
    batch's (padded) text; the detector sets them.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        feat_channels: int = 256,
        lang_dim: int = 768,
        num_dyhead_blocks: int = 6,
        use_dyrelu: bool = True,
        use_dyfuse: bool = True,
        use_dcn: bool = True,
        norm_groups: int = 16,
        dcn_impl: str = 'torch',
        with_cp: bool = False,
        anchor_generator: dict[str, Any] | None = None,
        bbox_coder: dict[str, Any] | None = None,
        loss_cls: dict[str, Any] | None = None,
        loss_bbox: dict[str, Any] | None = None,
        loss_centerness: dict[str, Any] | None = None,
        train_cfg: dict[str, Any] | None = None,
        test_cfg: dict[str, Any] | None = None,
        init_cfg: dict[str, Any] | None = None,
    ) -> None:
        self._dyhead_args = dict(
            lang_dim=lang_dim,
            num_blocks=num_dyhead_blocks,
            use_dyrelu=use_dyrelu,
            use_dyfuse=use_dyfuse,
            use_dcn=use_dcn,
            norm_groups=norm_groups,
            dcn_impl=dcn_impl,
            with_cp=with_cp,
        )
        super().__init__(
            num_classes=1,  # unused: the classes are the names of each image's prompt
            in_channels=in_channels,
            feat_channels=feat_channels,
            anchor_generator=anchor_generator
            or dict(
                type='AnchorGenerator',
                ratios=[1.0],
                octave_base_scale=8,
                scales_per_octave=1,
                strides=[8, 16, 32, 64, 128],
                center_offset=0.5,
            ),
            bbox_coder=bbox_coder
            or dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_decoded_bbox=True,
            loss_cls=loss_cls
            or dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
            loss_bbox=loss_bbox or dict(type='GIoULoss', loss_weight=2.0),
            loss_centerness=loss_centerness
            or dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
            train_cfg=train_cfg,
            test_cfg=test_cfg,
            init_cfg=init_cfg,
        )

    def _init_layers(self) -> None:
        if self.num_base_priors != 1:
            raise ValueError(
                f'FIBERGroundingHead: {self.num_base_priors} anchors per location; the dot product scores '
                'one region per location (anchor ratios=[1.0], scales_per_octave=1)'
            )
        self.head = GroundingDyHead(
            in_channels=self.in_channels,
            feat_channels=self.feat_channels,
            num_levels=self.prior_generator.num_levels,
            **self._dyhead_args,
        )

    def forward(  # type: ignore[override]
        self, img_feats: Sequence[Tensor], txt_tokens: Tensor, txt_mask: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """``cls_logits`` per level (B, H*W, L), ``bbox_preds`` (B, 4, H, W), ``centernesses``
        (B, 1, H, W)."""
        return self.head(img_feats, txt_tokens, txt_mask)

    # ----------------------------------------------------------------------------------------------- training
    def loss(  # type: ignore[override]
        self,
        img_feats: Sequence[Tensor],
        txt_tokens: Tensor,
        txt_mask: Tensor,
        batch_data_samples: SampleList,
    ) -> dict[str, Tensor]:
        gt_instances, gt_ignore, img_metas = unpack_gt_instances(batch_data_samples)
        outs = self(img_feats, txt_tokens, txt_mask)
        return self.loss_by_feat(*outs, txt_mask, gt_instances, img_metas, gt_ignore)

    def loss_by_feat(  # type: ignore[override]
        self,
        cls_logits: list[Tensor],
        bbox_preds: list[Tensor],
        centernesses: list[Tensor],
        txt_mask: Tensor,
        batch_gt_instances: InstanceList,
        batch_img_metas: list[dict[str, Any]],
        batch_gt_instances_ignore: OptInstanceList = None,
    ) -> dict[str, Tensor]:
        """Alignment (focal over real tokens), GIoU and centerness losses; ``txt_mask`` (B, L) bool."""
        length = txt_mask.shape[1]
        for gt in batch_gt_instances:
            if 'positive_maps' not in gt or gt.positive_maps.shape[-1] != length:
                raise ValueError(
                    f'FIBERGroundingHead: every gt_instances needs positive_maps (num_gt, {length})'
                )
        featmap_sizes = [pred.shape[-2:] for pred in bbox_preds]
        device = bbox_preds[0].device
        anchor_list, valid_flag_list = self.get_anchors(featmap_sizes, batch_img_metas, device=device)
        anchors_l, labels_l, label_weights_l, bbox_targets_l, bbox_weights_l, num_pos = self.get_targets(
            anchor_list, valid_flag_list, batch_gt_instances, batch_img_metas, batch_gt_instances_ignore
        )
        num_pos = reduce_mean(torch.tensor(float(num_pos), device=device)).clamp(min=1.0).item()
        anchors = torch.cat(anchors_l, dim=1).reshape(-1, 4)
        labels = torch.cat(labels_l, dim=1)  # (B, N, L)
        label_weights = torch.cat(label_weights_l, dim=1)  # (B, N)
        bbox_targets = torch.cat(bbox_targets_l, dim=1).reshape(-1, 4)
        pos = torch.cat(bbox_weights_l, dim=1)[..., 0].reshape(-1) > 0
        logits = torch.cat(cls_logits, dim=1).float()  # (B, N, L)
        bbox_pred = torch.cat([rearrange(p, 'b k h w -> b (h w) k') for p in bbox_preds], dim=1).reshape(
            -1, 4
        )
        centerness = torch.cat([rearrange(c, 'b 1 h w -> b (h w)') for c in centernesses], dim=1).reshape(-1)

        real = txt_mask[:, None, :].expand_as(logits)  # padded tokens have no loss
        weights = label_weights[..., None].expand_as(logits)
        loss_cls = self.loss_cls(logits[real], labels[real], weights[real], avg_factor=num_pos)

        pos_anchors, pos_targets = anchors[pos], bbox_targets[pos]
        pos_centerness, pos_bbox_pred = centerness[pos], bbox_pred[pos]
        if pos_anchors.shape[0] > 0:
            centerness_targets = self.centerness_target(pos_anchors, pos_targets)
            finite = torch.isfinite(centerness_targets)  # an anchor centre on a box edge gives 0/0
            centerness_targets, pos_anchors = centerness_targets[finite], pos_anchors[finite]
            pos_targets, pos_centerness = pos_targets[finite], pos_centerness[finite]
            pos_bbox_pred = pos_bbox_pred[finite]
        if pos_anchors.shape[0] > 0:
            pos_boxes = self.bbox_coder.decode(pos_anchors, pos_bbox_pred)
            loss_bbox = self.loss_bbox(pos_boxes, pos_targets, weight=centerness_targets, avg_factor=1.0)
            loss_centerness = self.loss_centerness(pos_centerness, centerness_targets, avg_factor=num_pos)
            weight_sum = reduce_mean(centerness_targets.sum().detach()).clamp(min=1.0).item()
            loss_bbox = loss_bbox / weight_sum
        else:  # no positive anchor: no box or centerness loss, but keep the graph connected
            loss_bbox = bbox_pred.sum() * 0
            loss_centerness = centerness.sum() * 0
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, loss_centerness=loss_centerness)

    def centerness_target(self, anchors: Tensor, gts: Tensor) -> Tensor:
        """ATSS centerness of anchor centres in their boxes (may be NaN on a box edge; callers filter)."""
        cx = (anchors[:, 0] + anchors[:, 2]) / 2
        cy = (anchors[:, 1] + anchors[:, 3]) / 2
        left_right = torch.stack([cx - gts[:, 0], gts[:, 2] - cx], dim=1)
        top_bottom = torch.stack([cy - gts[:, 1], gts[:, 3] - cy], dim=1)
        return torch.sqrt(
            (left_right.min(dim=-1).values / left_right.max(dim=-1).values)
            * (top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values)
        )

    def _get_targets_single(
        self,
        flat_anchors: Tensor,
        valid_flags: Tensor,
        num_level_anchors: list[int],
        gt_instances: InstanceData,
        img_meta: dict[str, Any],
        gt_instances_ignore: InstanceData | None = None,
        unmap_outputs: bool = True,
    ) -> tuple[Any, ...]:
        """ATSS targets of one image; the classification target of a positive anchor is the positive map
        (L,) of its box's name."""
        inside = anchor_inside_flags(
            flat_anchors, valid_flags, img_meta['img_shape'][:2], self.train_cfg['allowed_border']
        )
        if not inside.any():
            raise ValueError(
                'FIBERGroundingHead: no anchor inside the image; check anchor sizes/allowed_border'
            )
        anchors = flat_anchors[inside]
        num_inside = self.get_num_level_anchors_inside(num_level_anchors, inside)
        pred_instances = InstanceData(priors=anchors)
        assign = self.assigner.assign(pred_instances, num_inside, gt_instances, gt_instances_ignore)
        sampling = self.sampler.sample(assign, pred_instances, gt_instances)

        positive_maps = gt_instances.positive_maps
        bbox_targets = torch.zeros_like(anchors)
        bbox_weights = torch.zeros_like(anchors)
        labels = anchors.new_zeros((anchors.shape[0], positive_maps.shape[-1]), dtype=torch.float32)
        label_weights = anchors.new_zeros(anchors.shape[0], dtype=torch.float32)
        pos_inds, neg_inds = sampling.pos_inds, sampling.neg_inds
        if len(pos_inds) > 0:
            bbox_targets[pos_inds] = sampling.pos_gt_bboxes
            bbox_weights[pos_inds] = 1.0
            labels[pos_inds] = positive_maps[sampling.pos_assigned_gt_inds].float()
            pos_weight = self.train_cfg['pos_weight']
            label_weights[pos_inds] = 1.0 if pos_weight <= 0 else pos_weight
        if len(neg_inds) > 0:
            label_weights[neg_inds] = 1.0
        if unmap_outputs:
            total = flat_anchors.shape[0]
            anchors = unmap(anchors, total, inside)
            labels = unmap(labels, total, inside)
            label_weights = unmap(label_weights, total, inside)
            bbox_targets = unmap(bbox_targets, total, inside)
            bbox_weights = unmap(bbox_weights, total, inside)
        return anchors, labels, label_weights, bbox_targets, bbox_weights, pos_inds, neg_inds, sampling

    # ---------------------------------------------------------------------------------------------- inference
    def candidates_by_feat(
        self,
        cls_logits: list[Tensor],
        bbox_preds: list[Tensor],
        centernesses: list[Tensor],
        positive_map: Tensor,
        batch_img_metas: list[dict[str, Any]],
        label_offset: int = 0,
        cfg: dict[str, Any] | None = None,
    ) -> list[list[InstanceData]]:
        """Per image and level, the top ``nms_pre`` (location, class) pairs of one prompt.

        Args:
            cls_logits, bbox_preds, centernesses: :meth:`forward` outputs for B images sharing one prompt.
            positive_map: (C, L) bool, the prompt's names over its tokens.
            batch_img_metas: B meta dicts (``img_shape`` clips the boxes).
            label_offset: index of the prompt's first name in the whole vocabulary (chunks).

        Returns:
            ``[image][level]`` :class:`InstanceData` with ``scores`` (the mean probability of the name's
            tokens, GLIP's, or with ``test_cfg.name_score='geometric'`` their geometric mean; before
            centerness), ``labels`` (+ ``label_offset``), ``bboxes`` (input-image coordinates)
            and ``centerness`` (probability).
        """
        cfg = self.test_cfg if cfg is None else cfg
        nms_pre, score_thr = cfg.get('nms_pre', -1), cfg.get('score_thr', 0.0)
        name_score = cfg.get('name_score', 'mean')
        if name_score not in ('mean', 'geometric'):
            raise ValueError(f"test_cfg.name_score must be 'mean' or 'geometric', got {name_score!r}")
        if nms_pre <= 0:  # keep every pair (mmdet's filter_scores_and_topk needs a positive k)
            nms_pre = sum(int(pred.shape[-2] * pred.shape[-1]) for pred in bbox_preds) * positive_map.shape[0]
        name_weights = positive_map.float()
        name_weights = name_weights / name_weights.sum(dim=-1, keepdim=True).clamp(min=1.0)  # (C, L)
        featmap_sizes = [pred.shape[-2:] for pred in bbox_preds]
        mlvl_priors = self.prior_generator.grid_priors(
            featmap_sizes, dtype=torch.float32, device=bbox_preds[0].device
        )
        results = []
        for b, img_meta in enumerate(batch_img_metas):
            levels = []
            for level, priors in enumerate(mlvl_priors):
                logits = cls_logits[level][b].float()
                if name_score == 'mean':  # GLIP: the mean of the tokens' probabilities
                    scores = logits.sigmoid() @ name_weights.T  # (H*W, C)
                else:  # 'geometric': every token of the name must match (an AND of its words)
                    scores = (F.logsigmoid(logits) @ name_weights.T).exp()
                bbox_pred = rearrange(bbox_preds[level][b].float(), 'k h w -> (h w) k')
                centerness = rearrange(centernesses[level][b].float(), '1 h w -> (h w)').sigmoid()
                scores, labels, keep, kept = filter_scores_and_topk(
                    scores, score_thr, nms_pre, dict(bbox_pred=bbox_pred, priors=priors)
                )
                bboxes = self.bbox_coder.decode(
                    kept['priors'], kept['bbox_pred'], max_shape=img_meta['img_shape']
                )
                levels.append(
                    InstanceData(
                        scores=scores,
                        labels=labels + label_offset,
                        bboxes=bboxes,
                        centerness=centerness[keep],
                    )
                )
            results.append(levels)
        return results

    def merge_candidates(
        self,
        chunks: Sequence[Sequence[InstanceData]],
        img_meta: dict[str, Any],
        cfg: dict[str, Any] | None = None,
        rescale: bool = True,
        with_nms: bool = True,
    ) -> InstanceData:
        """One image's detections from the candidates of its prompt chunks (``chunks[chunk][level]``).

        Per level, the union of the chunks' candidates keeps its top ``nms_pre`` scores, which is the top-k
        one prompt with every name would keep; then GLIP's ``sqrt(score * centerness)``, the optional
        ``final_score_thr`` on it, class-wise NMS and ``max_per_img`` (mmdet's ``_bbox_post_process``;
        ``rescale`` maps boxes to the original image).
        """
        cfg = ConfigDict(self.test_cfg if cfg is None else cfg)  # mmdet's post-processing reads attributes
        nms_pre = cfg.get('nms_pre', -1)
        levels = []
        for per_chunk in zip(*chunks, strict=True):
            level = InstanceData.cat(list(per_chunk)) if len(per_chunk) > 1 else per_chunk[0]
            if 0 < nms_pre < len(level):
                level = level[level.scores.topk(nms_pre).indices]
            levels.append(level)
        results = InstanceData()
        results.bboxes = cat_boxes([level.bboxes for level in levels])
        results.scores = torch.sqrt(torch.cat([lv.scores * lv.centerness for lv in levels]))
        results.labels = torch.cat([level.labels for level in levels])
        final_score_thr = cfg.get('final_score_thr')
        if final_score_thr is not None:  # before NMS: a box below it suppresses only boxes below it
            results = results[results.scores >= float(final_score_thr)]
        return self._bbox_post_process(results, cfg, rescale=rescale, with_nms=with_nms, img_meta=img_meta)

    def predict_by_feat(  # type: ignore[override]
        self,
        cls_logits: list[Tensor],
        bbox_preds: list[Tensor],
        centernesses: list[Tensor],
        positive_map: Tensor,
        batch_img_metas: list[dict[str, Any]],
        cfg: dict[str, Any] | None = None,
        rescale: bool = True,
        with_nms: bool = True,
    ) -> InstanceList:
        """Detections of B images that share one prompt (labels index its names)."""
        candidates = self.candidates_by_feat(
            cls_logits, bbox_preds, centernesses, positive_map, batch_img_metas
        )
        return [
            self.merge_candidates([levels], meta, cfg=cfg, rescale=rescale, with_nms=with_nms)
            for levels, meta in zip(candidates, batch_img_metas, strict=True)
        ]
