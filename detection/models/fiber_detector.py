"""FIBER's fine-grained open-vocabulary detector: fusion backbone -> FPN -> DyHead grounding head.

Paper: Dou et al., "Coarse-to-Fine Vision-Language Pre-training with Fusion in the Backbone" (FIBER),
NeurIPS 2022, Sec. 3.2 (fine-grained pre-training and open-vocabulary detection): image and prompt are
encoded together by the fusion backbone (:class:`~pretrain.models.fiber_backbone.FIBERBackbone`), an FPN
lifts the Swin maps, and GLIP's head (Li et al., CVPR 2022, Sec. 3.1) scores every region against every
prompt token, trained with the alignment (focal), GIoU and centerness losses with ATSS assignment
(:class:`~detection.models.grounding_head.FIBERGroundingHead`). Reference code: microsoft/FIBER
``fine_grained/maskrcnn_benchmark/modeling/detector/generalized_vl_rcnn.py`` with ``EARLY_FUSE_ON: False``.

Prompts (:mod:`detection.models.prompts`): a data sample's ``text`` is its vocabulary (a tuple of names, as
mmdet's datasets give with ``return_classes=True``, or a caption ``'red circle. blue square.'``); ground-truth
labels index it. Training sees only what the data set puts there (an open-vocabulary training set lists base
names only). At test time a vocabulary longer than ``test_cfg.chunked_size`` is split into chunks; because the
fusion is in the backbone, the image is re-encoded with each chunk (GLIP only re-runs its text encoder), and
the chunks' candidates are merged per class before one top-k and NMS
(:meth:`FIBERGroundingHead.merge_candidates`). Predicted ``labels`` index the sample's names (mmdet's
convention; metrics map them to category ids) and ``label_names`` spell them.

What differs from FIBER: mmdet's detector API and data pipeline; prompts are not shuffled or padded with
negatives here (the ``SampleGroundingNames`` transform does that); chunks are merged before NMS rather than
after; no ``+1`` box offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmdet.models.detectors import SingleStageDetector
from mmdet.models.detectors.base import BaseDetector
from mmdet.structures import SampleList
from torch import Tensor

from detection.models.open_vocabulary import OpenVocabularyDetector, Vocabulary, check_names
from detection.models.prompts import GroundingPrompt, chunk_names, collate_prompts, encode_prompt
from detection.vocabulary import SEPARATOR, sample_names
from pretrain.models.fiber_backbone import FIBERBackbone
from toolkit.registry import MODELS, TOKENIZERS

__all__ = ['FIBERDetector']


@MODELS.register_module()
class FIBERDetector(SingleStageDetector, OpenVocabularyDetector):
    """Open-vocabulary detector with fusion in the backbone (FIBER, fine-grained).

    Args:
        backbone: a :class:`~pretrain.models.fiber_backbone.FIBERBackbone` (image + text), or its config.
        neck: an mmdet neck (``FPN``) over the backbone's ``image_feats``.
        bbox_head: a :class:`~detection.models.grounding_head.FIBERGroundingHead` config; ``lang_dim`` must be
            the text width of the backbone.
        tokenizer: a ``TOKENIZERS`` config with ``encode_with_offsets`` (``HFTokenizer`` of a local
            ``tokenizer.json``); its BOS/EOS/pad ids must be the text model's.
        separator: text between two names of a prompt (GLIP: ``'. '``).
        max_text_len: most prompt tokens, BOS/EOS included; ``None`` = the tokenizer's ``context_length``.
        train_cfg: the head's training config (ATSS assigner, ...).
        test_cfg: the head's test config plus ``chunked_size`` (names per prompt at test time; ``-1`` = one
            prompt with every name).
        data_preprocessor: an mmdet ``DetDataPreprocessor`` config.
        init_cfg: mmengine init config.

    Inputs are mmdet's: ``inputs`` (B, 3, H, W) and ``DetDataSample`` s whose metainfo has ``text``.
    """

    def __init__(
        self,
        *,
        backbone: FIBERBackbone | dict[str, Any],
        neck: dict[str, Any],
        bbox_head: dict[str, Any],
        tokenizer: dict[str, Any],
        separator: str = SEPARATOR,
        max_text_len: int | None = None,
        train_cfg: dict[str, Any] | None = None,
        test_cfg: dict[str, Any] | None = None,
        data_preprocessor: dict[str, Any] | None = None,
        init_cfg: dict[str, Any] | None = None,
    ) -> None:
        BaseDetector.__init__(self, data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if isinstance(backbone, dict):
            backbone = MODELS.build(backbone)
        if not isinstance(backbone, FIBERBackbone):
            raise TypeError(
                f'FIBERDetector: backbone must be a FIBERBackbone or its config, not {type(backbone)}'
            )
        self.backbone: FIBERBackbone = backbone
        self.neck = MODELS.build(neck)
        self.bbox_head = MODELS.build({**bbox_head, 'train_cfg': train_cfg, 'test_cfg': test_cfg})
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg
        self.tokenizer = TOKENIZERS.build(tokenizer)
        self.separator = separator
        self.max_text_len = int(max_text_len or self.tokenizer.context_length)
        self._check_text_model()

    def _check_text_model(self) -> None:
        text_cfg = self.backbone.text.config
        ours = (self.tokenizer.bos_token_id, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
        theirs = (text_cfg.bos_token_id, text_cfg.eos_token_id, text_cfg.pad_token_id)
        if ours != theirs:
            raise ValueError(
                f'FIBERDetector: tokenizer bos/eos/pad ids {ours} differ from the text model config {theirs}'
            )
        if self.tokenizer.vocab_size > text_cfg.vocab_size:
            raise ValueError(
                f'FIBERDetector: the tokenizer has {self.tokenizer.vocab_size} ids, the text model embeds '
                f'{text_cfg.vocab_size}'
            )
        positions = text_cfg.max_position_embeddings - text_cfg.pad_token_id - 1  # RoBERTa's position offset
        if self.max_text_len > positions:
            raise ValueError(
                f'FIBERDetector: max_text_len={self.max_text_len} exceeds the {positions} positions of the '
                'text model (max_position_embeddings - pad_token_id - 1)'
            )
        head_dim = self.bbox_head.head.dot_product_projection_text.in_features
        if head_dim != text_cfg.hidden_size:
            raise ValueError(
                f'FIBERDetector: bbox_head lang_dim={head_dim}, the text width is {text_cfg.hidden_size}'
            )

    # ------------------------------------------------------------------------------------------------ prompts
    def _names(self, sample: Any) -> tuple[str, ...]:
        return sample_names(sample, 'FIBERDetector', self.separator)

    def encode_prompt(self, names: tuple[str, ...]) -> GroundingPrompt:
        """The :class:`~detection.models.prompts.GroundingPrompt` of ``names`` with this model's tokenizer."""
        return encode_prompt(self.tokenizer, names, separator=self.separator, max_length=self.max_text_len)

    # ------------------------------------------------------------------------------------------------ running
    def extract_feat(  # type: ignore[override]
        self, batch_inputs: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        """Fusion backbone and neck: ``img_feats`` (the neck's maps), ``txt_tokens`` (B, L, D) and
        ``txt_mask`` (B, L) bool."""
        out = self.backbone(batch_inputs, input_ids, attention_mask)
        return tuple(self.neck(out.image_feats)), out.text_hidden, out.text_mask

    def _encode_batch(
        self, vocabularies: list[tuple[str, ...]], device: Any
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        cache: dict[tuple[str, ...], GroundingPrompt] = {}
        prompts = []
        for names in vocabularies:
            if names not in cache:
                cache[names] = self.encode_prompt(names)
            prompts.append(cache[names])
        input_ids, attention_mask, maps = collate_prompts(prompts, self.tokenizer.pad_token_id)
        return input_ids.to(device), attention_mask.to(device), [m.to(device) for m in maps]

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> dict[str, Tensor]:  # type: ignore[override]
        vocabularies = [self._names(sample) for sample in batch_data_samples]
        input_ids, attention_mask, maps = self._encode_batch(vocabularies, batch_inputs.device)
        for sample, names, positive_map in zip(batch_data_samples, vocabularies, maps, strict=True):
            labels = sample.gt_instances.labels
            if labels.numel() and int(labels.max()) >= len(names):
                raise ValueError(
                    f'FIBERDetector: gt label {int(labels.max())} but the sample text has {len(names)} names'
                )
            sample.gt_instances.positive_maps = positive_map[labels].float()
        img_feats, txt_tokens, txt_mask = self.extract_feat(batch_inputs, input_ids, attention_mask)
        return self.bbox_head.loss(img_feats, txt_tokens, txt_mask, batch_data_samples)

    def encode_vocabulary(self, names: Sequence[str]) -> Vocabulary:
        """The prompts of ``names``' chunks (``test_cfg.chunked_size`` names each) as ``(range of the names,
        GroundingPrompt)`` pairs; ``ValueError`` naming the names of a prompt longer than ``max_text_len``."""
        names = check_names(names)
        chunks = chunk_names(names, int((self.test_cfg or {}).get('chunked_size', -1)))
        return Vocabulary(
            names, [(part, self.encode_prompt(names[part.start : part.stop])) for part in chunks]
        )

    def predict(  # type: ignore[override]
        self, batch_inputs: Tensor, batch_data_samples: SampleList, rescale: bool = True
    ) -> SampleList:
        """Detections in original image coordinates (``rescale``); see the module docstring for chunks."""
        groups: dict[tuple[str, ...], list[int]] = {}
        for index, sample in enumerate(batch_data_samples):
            groups.setdefault(self._names(sample), []).append(index)
        results: list[Any] = [None] * len(batch_data_samples)
        for names, indices in groups.items():
            samples = [batch_data_samples[i] for i in indices]
            detections = self._predict_group(
                batch_inputs[indices], samples, self.encode_vocabulary(names), rescale
            )
            for index, instances in zip(indices, detections, strict=True):
                results[index] = instances
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
        """Detections of every image for ``vocabulary`` (see :class:`OpenVocabularyDetector`).

        ``score_thr`` applies to the final score ``sqrt(s * centerness)``; since that is at most ``sqrt(s)``,
        the candidates are first pruned at ``s >= score_thr ** 2``, which drops none that could reach it.
        """
        cfg = dict(self.test_cfg or {})
        if score_thr is not None:
            cfg['score_thr'] = float(score_thr) ** 2
            cfg['final_score_thr'] = float(score_thr)
        if max_per_img is not None:
            cfg['max_per_img'] = int(max_per_img)
        results = self._predict_group(batch_inputs, batch_data_samples, vocabulary, rescale, cfg)
        return self.add_pred_to_datasample(batch_data_samples, results)

    def _predict_group(
        self,
        images: Tensor,
        samples: SampleList,
        vocabulary: Vocabulary,
        rescale: bool,
        cfg: dict[str, Any] | None = None,
    ) -> list[Any]:
        metas = [sample.metainfo for sample in samples]
        per_image: list[list[Any]] = [[] for _ in samples]
        for part, prompt in vocabulary.encoding:
            input_ids = prompt.input_ids.to(images.device).expand(len(samples), -1)
            attention_mask = input_ids.new_ones(input_ids.shape, dtype=bool)
            img_feats, txt_tokens, txt_mask = self.extract_feat(images, input_ids, attention_mask)
            outs = self.bbox_head(img_feats, txt_tokens, txt_mask)
            candidates = self.bbox_head.candidates_by_feat(
                *outs, prompt.positive_map.to(images.device), metas, label_offset=part.start, cfg=cfg
            )
            for image_candidates, levels in zip(per_image, candidates, strict=True):
                image_candidates.append(levels)
        results = []
        for meta, chunks in zip(metas, per_image, strict=True):
            detections = self.bbox_head.merge_candidates(chunks, meta, cfg=cfg, rescale=rescale)
            detections.label_names = [vocabulary.names[label] for label in detections.labels.tolist()]
            results.append(detections)
        return results

    def _forward(  # type: ignore[override]
        self, batch_inputs: Tensor, batch_data_samples: SampleList | None = None
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Raw head outputs for the first chunk of the first sample's names (``mode='tensor'``)."""
        if not batch_data_samples:
            raise ValueError('FIBERDetector: tensor mode needs data samples with `text`')
        names = self._names(batch_data_samples[0])
        first = chunk_names(names, int((self.test_cfg or {}).get('chunked_size', -1)))[0]
        prompt = self.encode_prompt(names[first.start : first.stop])
        input_ids = prompt.input_ids.to(batch_inputs.device).expand(batch_inputs.shape[0], -1)
        img_feats, txt_tokens, txt_mask = self.extract_feat(
            batch_inputs, input_ids, input_ids.new_ones(input_ids.shape, dtype=bool)
        )
        return self.bbox_head(img_feats, txt_tokens, txt_mask)
