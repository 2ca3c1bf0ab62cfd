"""MaMMUT's open-vocabulary detector: the pretrained ViT, a simple feature pyramid and a two-stage head whose
classifier is the MaMMUT text decoder's contrastive embeddings of the category names.

Papers: Kuo et al., "MaMMUT: A Simple Architecture for Joint Learning for MultiModal Tasks", TMLR 2023,
Sec. 4.3 (open-vocabulary detection on the MaMMUT image encoder, following RO-ViT); Kim et al., "Region-Aware
Pretraining for Open-Vocabulary Object Detection with Vision Transformers" (RO-ViT), CVPR 2023, Sec. 3.1
(cropped positional embeddings in pretraining, full up-sampled embeddings at detection size) and Sec. 3.3
(detector: ViTDet's simple pyramid, Mask R-CNN heads with class-agnostic boxes, text-embedding classifier
with a background embedding trained on base categories with focal loss, and the ensemble with the pretrained
model's scores at test time).

Parts:

* ``vlm``: the pretrained MaMMUT (built, or its config; loaded from ``pretrained``), kept frozen and in eval
  mode. Its contrastive text pass embeds each category name (averaged over ``templates``), in batches (a
  large vocabulary: one pass per batch, not one per image). The model caches nothing: training embeds the
  batch's names at each step, and a caller that sees a vocabulary again keeps its
  :class:`~detection.models.open_vocabulary.Vocabulary` (the inferencer's bounded cache).
* ``backbone``: :class:`MaMMUTViTBackbone`, a trainable copy of the MaMMUT ViT (initialised from ``vlm``'s
  encoder), run with its full positional embeddings bilinearly up-sampled to the detection grid (never
  cropped). ``neck``: :class:`~detection.models.simple_pyramid.SimpleFeaturePyramid`.
* ``rpn_head`` / ``roi_head``: mmdet's ``RPNHead`` and ``StandardRoIHead`` with a
  :class:`~detection.models.text_bbox_head.TextEmbeddingBBoxHead`.
* ``ensemble`` (optional): the frozen MaMMUT also embeds each proposal, from its RoI-aligned tokens of the
  whole image (RO-ViT) or by re-encoding its crop (ViLD); the class probabilities ``p_vlm`` of that embedding
  (softmax over the vocabulary at the MaMMUT temperature) are blended with the detector's ``p_det`` per class
  as ``p_det^(1 - w) * p_vlm^w``, ``w = alpha`` for base names and ``beta`` for the others (RO-ViT / F-VLM).

Vocabulary contract (as the FIBER detector): each data sample's metainfo ``text`` is its vocabulary (a tuple
of names or ``'a. b.'``); ground-truth labels index it and predicted labels index it (``label_names`` spell
them). A batch whose samples list different vocabularies trains on their union. An open-vocabulary training
set lists base names only, so novel names never reach the training loss.

What differs from RO-ViT: no mask head; the learned temperature; the softmax form of the focal loss.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from mmdet.models.detectors import TwoStageDetector
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox2roi
from mmengine.config import ConfigDict
from mmengine.model import BaseModule
from torch import Tensor
from torchvision.ops import roi_align

from detection.models.open_vocabulary import OpenVocabularyDetector, Vocabulary, check_names
from detection.vocabulary import read_ov_split, sample_names
from pretrain.models.mammut import MaMMUT
from pretrain.models.vit import MaMMUTViT
from toolkit.checkpoint import load_state_dict_file
from toolkit.registry import MODELS

__all__ = ['MaMMUTDetector', 'MaMMUTViTBackbone', 'format_name']

_ARTICLE = re.compile(r'\b([Aa]) (?=[aeiouAEIOU])')
_ENSEMBLE_KEYS = {'alpha', 'beta', 'base_names', 'region', 'crop_scale', 'crop_batch', 'temperature'}


def format_name(template: str, name: str) -> str:
    """``template`` with ``{}`` replaced by ``name``; ``a`` before a vowel becomes ``an`` ('an orange')."""
    return _ARTICLE.sub(r'\1n ', template.format(name))


def _encoder_width(encoder: MaMMUTViT | dict[str, Any]) -> int:
    """Token width D of a ``MaMMUTViT`` or of its config."""
    return int(encoder.embed_dim if isinstance(encoder, MaMMUTViT) else encoder['embed_dim'])


@MODELS.register_module()
class MaMMUTViTBackbone(BaseModule):
    """The MaMMUT ViT as a detection backbone: the last block's tokens as a map (B, D, H / p, W / p).

    Args:
        encoder: a :class:`MaMMUTViT`, or its config. Cropped positional embeddings are switched off:
            detection always uses the full embeddings, bilinearly up-sampled to the input's patch grid (RO-ViT
            Sec. 3.1).
        out_indices: blocks whose (normed) tokens are returned, as maps.
        init_cfg: mmengine init config.
    """

    def __init__(
        self,
        *,
        encoder: MaMMUTViT | dict[str, Any],
        out_indices: Sequence[int] = (-1,),
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if isinstance(encoder, dict):
            encoder = MODELS.build({**encoder, 'cropped_pos_emb': False})
        if not isinstance(encoder, MaMMUTViT):
            raise TypeError(
                f'MaMMUTViTBackbone: encoder must be a MaMMUTViT or its config, not {type(encoder)}'
            )
        encoder.cropped_pos_emb = False
        self.encoder: MaMMUTViT = encoder
        self.out_indices = tuple(int(i) for i in out_indices)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.encoder.feature_maps(images, self.out_indices))


@MODELS.register_module()
class MaMMUTDetector(TwoStageDetector, OpenVocabularyDetector):
    """Open-vocabulary two-stage detector on a pretrained MaMMUT (see the module docstring).

    Args:
        vlm: the pretrained :class:`MaMMUT`, or its config (image encoder, text decoder, tokenizer,
            ``embed_dim``); its ``generation`` is switched off.
        neck: a ``SimpleFeaturePyramid`` config; ``in_channels`` defaults to the ViT width.
        rpn_head: mmdet ``RPNHead`` config.
        roi_head: mmdet ``StandardRoIHead`` config with a ``TextEmbeddingBBoxHead``; its ``embed_dim``
            defaults to ``vlm.embed_dim``.
        backbone: a ``MaMMUTViTBackbone`` config; ``None`` builds one from ``vlm``'s image encoder (its
            config, or a copy of the built one).
        pretrained: a MaMMUT checkpoint (local path, loaded safely by :meth:`init_weights`) for ``vlm`` and
            the backbone. ``None``: random init (tests) or weights from a detector checkpoint.
        templates: texts a name is put in; their embeddings are averaged (``'{}'`` = the name alone).
        freeze_backbone: keep the pretrained ViT fixed and train the neck and heads only (F-VLM, Kuo et al.,
            ICLR 2023): the detector's features are then exactly the pretrained ones.
        ensemble: ``dict(alpha=..., beta=..., base_names=[...] or an ov_split JSON path,
            region='roi_align' | 'crop', crop_scale=1.0, crop_batch=256, temperature=None)`` to blend
            the proposals' region embeddings in at test time (names outside ``base_names`` get ``beta``);
            ``None``: off.
        train_cfg / test_cfg: mmdet two-stage configs (``rpn``, ``rpn_proposal``, ``rcnn``).
        data_preprocessor: mmdet ``DetDataPreprocessor`` config (MaMMUT's mean/std).
        init_cfg: mmengine init config.
    """

    def __init__(
        self,
        *,
        vlm: MaMMUT | dict[str, Any],
        neck: dict[str, Any],
        rpn_head: dict[str, Any],
        roi_head: dict[str, Any],
        backbone: dict[str, Any] | None = None,
        pretrained: str | None = None,
        templates: Sequence[str] = ('{}',),
        ensemble: dict[str, Any] | None = None,
        freeze_backbone: bool = False,
        train_cfg: dict[str, Any] | None = None,
        test_cfg: dict[str, Any] | None = None,
        data_preprocessor: dict[str, Any] | None = None,
        init_cfg: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(vlm, MaMMUT | dict):
            raise TypeError(f'MaMMUTDetector: vlm must be a MaMMUT or its config, not {type(vlm)}')
        if backbone is None:
            encoder = copy.deepcopy(vlm.image_encoder) if isinstance(vlm, MaMMUT) else vlm['image_encoder']
            backbone = dict(type='MaMMUTViTBackbone', encoder=encoder)
        neck = {'in_channels': _encoder_width(backbone['encoder']), **neck}
        vlm_dim = vlm.embed_dim if isinstance(vlm, MaMMUT) else vlm['embed_dim']
        bbox_head = {'embed_dim': int(vlm_dim), **roi_head['bbox_head']}
        roi_head = {**roi_head, 'bbox_head': bbox_head}
        # mmdet reads the stage configs by attribute (train_cfg.rpn): plain dicts from Python work too.
        train_cfg = ConfigDict(train_cfg) if train_cfg is not None else None
        test_cfg = ConfigDict(test_cfg) if test_cfg is not None else None
        super().__init__(
            backbone=backbone,
            neck=neck,
            rpn_head=rpn_head,
            roi_head=roi_head,
            train_cfg=train_cfg,
            test_cfg=test_cfg,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg,
        )
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)
        # A config is built here, after the detector's parts (the order their random initialisation draws in).
        if isinstance(vlm, dict):
            vlm = MODELS.build({**vlm, 'generation': None})
        if not isinstance(vlm, MaMMUT):
            raise TypeError(f'MaMMUTDetector: vlm config builds a {type(vlm)}, not a MaMMUT')
        vlm.generation = None
        self.vlm: MaMMUT = vlm
        self.vlm.requires_grad_(False)
        self.vlm.eval()
        if not templates or any('{}' not in template for template in templates):
            raise ValueError(f"MaMMUTDetector: every template needs a '{{}}' for the name, got {templates!r}")
        self.templates = tuple(templates)
        self.pretrained = pretrained
        if ensemble is not None:
            unknown = set(ensemble) - _ENSEMBLE_KEYS
            if unknown:
                raise ValueError(f'MaMMUTDetector: unknown ensemble keys {sorted(unknown)}')
            for key in ('alpha', 'beta'):
                if not 0.0 <= float(ensemble.get(key, 0.0)) <= 1.0:
                    raise ValueError(f'MaMMUTDetector: ensemble {key} must be in [0, 1]')
        self.ensemble = dict(ensemble) if ensemble is not None else None
        base_names = (ensemble or {}).get('base_names', ())
        if isinstance(base_names, str):  # an ov_split JSON file: its "base" list
            base_names = (read_ov_split(base_names) or {}).get('base', ())
        self.base_names = frozenset(str(name) for name in base_names)

    # ------------------------------------------------------------------------------------------------ weights
    def train(self, mode: bool = True) -> MaMMUTDetector:
        super().train(mode)
        self.vlm.eval()  # frozen: no dropout, the name embeddings do not depend on the mode
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def extract_feat(self, batch_inputs: Tensor) -> tuple[Tensor, ...]:
        """Backbone (without autograd when frozen) and neck: the pyramid maps."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            img_maps = self.backbone(batch_inputs)
        return tuple(self.neck(img_maps))

    def init_weights(self) -> None:
        super().init_weights()
        if self.pretrained is None:
            return
        state_dict = load_state_dict_file(self.pretrained)
        try:
            missing, unexpected = self.vlm.load_state_dict(state_dict, strict=False)
        except RuntimeError as error:  # a tensor of another shape: another MaMMUT config
            raise ValueError(
                f'MaMMUTDetector: {self.pretrained} does not fit the vlm config: {error}'
            ) from None
        if missing or unexpected:
            raise ValueError(
                f'MaMMUTDetector: {self.pretrained} is not a checkpoint of this MaMMUT config: '
                f'missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}'
            )
        encoder_state = self.vlm.image_encoder.state_dict()
        self.backbone.encoder.load_state_dict(encoder_state)

    # ------------------------------------------------------------------------------------------------ text
    def _names(self, sample: Any) -> tuple[str, ...]:
        return sample_names(sample, 'MaMMUTDetector')

    @torch.no_grad()
    def text_embeddings(self, names: Sequence[str], batch_size: int = 256) -> Tensor:
        """L2-normalised text embeddings (C, E) of ``names``: each averaged over the templates and
        re-normalised (CLIP's prompt ensemble), ``batch_size`` texts per text-decoder pass."""
        texts = [format_name(template, name) for name in names for template in self.templates]
        chunks = [self.vlm.encode_text(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        txt_emb = torch.cat(chunks).float().view(len(names), len(self.templates), -1).mean(dim=1)
        return F.normalize(txt_emb, dim=-1)

    def encode_vocabulary(self, names: Sequence[str]) -> Vocabulary:
        """The names' text embeddings (C, E); ``ValueError`` naming the names whose embedding is not finite
        (NaN or inf in the text decoder's weights)."""
        names = check_names(names)
        txt_emb = self.text_embeddings(names)
        finite = torch.isfinite(txt_emb).all(dim=1).tolist()
        if bad := [name for name, ok in zip(names, finite, strict=True) if not ok]:
            raise ValueError(f'names {bad} embed to non-finite vectors (NaN or inf in the text decoder?)')
        return Vocabulary(names, txt_emb)

    # ------------------------------------------------------------------------------------------------ modes
    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> dict[str, Tensor]:  # type: ignore[override]
        vocabularies = [self._names(sample) for sample in batch_data_samples]
        batch_names = tuple(dict.fromkeys(name for names in vocabularies for name in names))
        index = {name: i for i, name in enumerate(batch_names)}
        for sample, names in zip(batch_data_samples, vocabularies, strict=True):
            labels = sample.gt_instances.labels
            if labels.numel() and int(labels.max()) >= len(names):
                raise ValueError(
                    f'MaMMUTDetector: gt label {int(labels.max())} but the sample text has {len(names)} names'
                )
            to_batch = torch.tensor([index[name] for name in names], dtype=torch.long, device=labels.device)
            sample.gt_instances.labels = to_batch[labels.long()]
        self.roi_head.bbox_head.set_vocabulary(self.text_embeddings(batch_names))
        return super().loss(batch_inputs, batch_data_samples)

    def predict(  # type: ignore[override]
        self, batch_inputs: Tensor, batch_data_samples: SampleList, rescale: bool = True
    ) -> SampleList:
        """Detections (original image coordinates with ``rescale``) for each sample's own vocabulary."""
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, sample in enumerate(batch_data_samples):
            groups.setdefault(self._names(sample), []).append(i)
        results: list[Any] = [None] * len(batch_data_samples)
        for names, indices in groups.items():
            samples = [batch_data_samples[i] for i in indices]
            vocabulary = self.encode_vocabulary(names)
            detections_list = self._predict_group(batch_inputs[indices], samples, vocabulary, rescale)
            for i, detections in zip(indices, detections_list, strict=True):
                results[i] = detections
        return self.add_pred_to_datasample(batch_data_samples, results)

    def predict_vocabulary(
        self,
        batch_inputs: Tensor,
        batch_data_samples: SampleList,
        vocabulary: Vocabulary,
        *,
        rescale: bool = True,
        score_thr: float | None = None,
        max_per_img: int | None = None,
    ) -> SampleList:
        """Detections of every image for ``vocabulary`` (see :class:`OpenVocabularyDetector`); the thresholds
        replace ``test_cfg.rcnn``'s for this call."""
        rcnn = dict(self.test_cfg.rcnn)
        if score_thr is not None:
            rcnn['score_thr'] = float(score_thr)
        if max_per_img is not None:
            rcnn['max_per_img'] = int(max_per_img)
        results = self._predict_group(batch_inputs, batch_data_samples, vocabulary, rescale, ConfigDict(rcnn))
        return self.add_pred_to_datasample(batch_data_samples, results)

    def _predict_group(
        self,
        images: Tensor,
        samples: SampleList,
        vocabulary: Vocabulary,
        rescale: bool,
        rcnn_cfg: ConfigDict | None = None,
    ) -> list[Any]:
        names, txt_emb = vocabulary.names, vocabulary.encoding
        self.roi_head.bbox_head.set_vocabulary(txt_emb.to(images.device))
        metas = [sample.metainfo for sample in samples]
        img_feats = self.extract_feat(images)
        proposals = self.rpn_head.predict(img_feats, samples, rescale=False)
        rois = bbox2roi([proposal.bboxes for proposal in proposals])
        bbox_results = self.roi_head._bbox_forward(img_feats, rois)
        probs = bbox_results['cls_score'].float().softmax(dim=-1)
        if self.ensemble is not None and rois.shape[0]:
            probs = self.ensemble_probs(images, rois, probs, vocabulary)
        counts = [len(proposal) for proposal in proposals]
        detections_list = self.roi_head.bbox_head.predict_from_probs(
            rois.split(counts),
            probs.split(counts),
            bbox_results['bbox_pred'].split(counts),
            metas,
            self.test_cfg.rcnn if rcnn_cfg is None else rcnn_cfg,
            rescale=rescale,
        )
        for detections in detections_list:
            detections.label_names = [names[label] for label in detections.labels.tolist()]
        return detections_list

    # ---------------------------------------------------------------------------------------------- ensemble
    @torch.no_grad()
    def region_embeddings(self, images: Tensor, rois: Tensor) -> Tensor:
        """The frozen MaMMUT's image embeddings (K, E) of the regions ``rois`` (K, 5) of ``images``.

        ``ensemble.region='roi_align'`` (RO-ViT): the frozen ViT encodes the whole image at detection size
        (full up-sampled positional embeddings); each region's tokens are RoI-aligned to the pretraining grid
        and pooled and projected as a pretraining image. ``'crop'`` (ViLD): each region, enlarged by
        ``crop_scale`` around its centre, is resampled to the pretraining input size and encoded as a whole
        image (one ViT pass per region: costly).
        """
        cfg = self.ensemble or {}
        encoder: MaMMUTViT = self.vlm.image_encoder
        grid = tuple(int(side) for side in encoder.grid_size)
        patch = int(encoder.patch_size)
        region = cfg.get('region', 'roi_align')
        if region == 'roi_align':
            img_map = encoder.feature_maps(images)[0].float()  # (B, D, H / p, W / p)
            pooled = roi_align(
                img_map, rois.float(), output_size=grid, spatial_scale=1.0 / patch, aligned=True
            )
            return self.vlm.image_embedding(rearrange(pooled, 'k d h w -> k (h w) d')).float()
        if region != 'crop':
            raise ValueError(f"MaMMUTDetector: ensemble region must be 'roi_align' or 'crop', got {region!r}")
        scale = float(cfg.get('crop_scale', 1.0))
        centre = (rois[:, 1:3] + rois[:, 3:5]) / 2
        half = (rois[:, 3:5] - rois[:, 1:3]).clamp(min=1.0) * scale / 2
        boxes = torch.cat([rois[:, :1], centre - half, centre + half], dim=1).to(images.dtype)
        size = (grid[0] * patch, grid[1] * patch)
        batch = int(cfg.get('crop_batch', 256))
        embeddings = []
        for start in range(0, boxes.shape[0], batch):
            crops = roi_align(images, boxes[start : start + batch], output_size=size, aligned=True)
            embeddings.append(self.vlm.encode_image(crops).float())
        return torch.cat(embeddings)

    def ensemble_probs(self, images: Tensor, rois: Tensor, probs: Tensor, vocabulary: Vocabulary) -> Tensor:
        """Blend the detector's probabilities (K, C + 1) with the region embeddings' class probabilities."""
        cfg = self.ensemble or {}
        names, txt_emb = vocabulary.names, vocabulary.encoding.to(probs.device)
        temperature = cfg.get('temperature')
        scale = 1.0 / float(temperature) if temperature else float(self.vlm.current_logit_scale())
        vlm_probs = (scale * self.region_embeddings(images, rois) @ txt_emb.t()).softmax(dim=-1)
        weight = torch.tensor(
            [float(cfg['alpha'] if name in self.base_names else cfg['beta']) for name in names],
            device=probs.device,
        )
        blended = probs[:, :-1].clamp(min=1e-12) ** (1 - weight) * vlm_probs.clamp(min=1e-12) ** weight
        return torch.cat([blended, probs[:, -1:]], dim=1)

    def _forward(  # type: ignore[override]
        self, batch_inputs: Tensor, batch_data_samples: SampleList | None = None
    ) -> tuple:
        """Raw RPN and RoI outputs for the first sample's vocabulary (``mode='tensor'``)."""
        if not batch_data_samples:
            raise ValueError('MaMMUTDetector: tensor mode needs data samples with `text`')
        self.roi_head.bbox_head.set_vocabulary(self.text_embeddings(self._names(batch_data_samples[0])))
        return super()._forward(batch_inputs, batch_data_samples)
