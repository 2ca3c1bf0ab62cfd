"""ALBEF: image-text contrastive learning against momentum queues, ITM with hard negatives and MLM, distilled.

Paper: Li et al., "Align before Fuse: Vision and Language Representation Learning with Momentum
Distillation", NeurIPS 2021, Sec. 3. Reference code: salesforce/ALBEF ``models/model_pretrain.py`` and
``models/model_retrieval.py``.

Model (Sec. 3.1): a ViT image encoder whose class token feeds ITC; a BERT stack split into a text encoder (the
first ``num_text_layers``, 6 of 12) and a fusion encoder (the rest, cross-attending to all image tokens):
:class:`~pretrain.models.bert.BertFusionEncoder`. A momentum copy of the image encoder, text stack,
projections and MLM head is an exponential moving average of the online weights (``momentum`` 0.995), updated
before each training step and never trained.

Per training step on B image-caption pairs (Sec. 3.2-3.3):

* ITC: the online image (text) feature of each pair against the momentum text (image) features of the global
  batch (gathered across processes) followed by the queue of earlier momentum features (``queue_size``,
  65,536 in the paper); learnable temperature ``temp`` clamped to [0.001, 0.5]. Positives: every key with the
  query's ``img_id`` (its pair, other captions of the image). Momentum distillation: the target is
  ``(1 - alpha) * positives + alpha * softmax(momentum logits)`` (Eq. 4, :mod:`.albef_losses`); ``alpha`` is
  ramped from 0 over ``alpha_warmup_iters`` (ALBEF: the first epoch).
* ITM: positives plus a hard-negative caption per image and a hard-negative image per caption, drawn with
  probability softmax(ITC similarity) from the global batch, never a candidate with the same ``img_id``;
  a linear head on the fused first token.
* MLM: BERT masking (15 %, 80/10/10) of the caption, predicted through the fusion encoder with the image;
  target ``(1 - alpha) * one-hot + alpha * softmax(momentum model's logits)`` (Eq. 5).

The ITM pairs (up to 3B) and the MLM pairs (B) go through the fusion layers in one call. After the losses the
gathered momentum features are enqueued.

Retrieval (``predict``, Sec. 5.2): ``img_emb`` / ``txt_emb`` (the ITC features) rank; each sample also carries
``itm_inputs`` and ``itm_scorer`` so that ``RetrievalMetric(rerank_k=k)`` re-ranks the top-k of both
directions by the ITM score.

What differs from ALBEF: queue entries not yet written are left out of the logits (ALBEF starts from random
features); a sample without ``img_id`` counts as its own image; the MLM head runs on the chosen positions
only; queue positives come from ``img_id`` in pretraining too (ALBEF uses them in retrieval fine-tuning only).

Data contract: ``inputs`` (B, 3, H, W) normalised; training samples carry ``text`` (and ``img_id``);
evaluation samples ``gt_captions`` (list[str]) and ``img_id``.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.structures import BaseDataElement
from torch import Tensor, nn

from toolkit.distributed import gather_with_grad, world_info
from toolkit.registry import MODELS, TOKENIZERS
from toolkit.tokenizers import pad_id_rows

from .albef_losses import FeatureQueue, soft_cross_entropy
from .base import VLBaseModel
from .bert import BertFusionEncoder, convert_hf_bert, load_hf_bert
from .fiber import ITMScorer, LMHead
from .fiber_losses import sample_hard_negatives
from .image_text_model import ImageTextModel
from .losses import global_mean

__all__ = ['ALBEF']

_MOMENTUM_PARTS = ('visual_encoder', 'vision_proj', 'text_encoder', 'text_proj', 'mlm_head')


@MODELS.register_module()
class ALBEF(VLBaseModel, ImageTextModel):
    """ALBEF pretraining (ITC + ITM + MLM with momentum distillation) and retrieval.

    Args:
        image_encoder: config of a ViT with a class token (``MaMMUTViT(class_token=True)``); its
            ``forward_all_tokens`` gives the class token first, then the patch tokens.
        text_encoder: keyword arguments of :class:`~pretrain.models.bert.BertFusionEncoder` except
            ``vocab_size``, ``pad_token_id`` and ``context_dim`` (from the tokenizer and the image encoder).
        tokenizer: config of a ``toolkit`` tokenizer (BOS = BERT's ``[CLS]``, read for ITC and ITM) or a built
            one.
        embed_dim: width of the ITC features (ALBEF 256).
        queue_size: momentum features kept per modality (ALBEF 65,536; 0 = the global batch only).
        momentum: EMA coefficient of the momentum model (ALBEF 0.995).
        alpha: weight of the momentum model's soft targets (ALBEF 0.4).
        alpha_warmup_iters: iterations over which ``alpha`` ramps linearly from 0 (ALBEF: one epoch); 0: none.
        temperature_init: initial ITC temperature (ALBEF 0.07).
        itc_loss: config of :class:`~pretrain.models.albef_losses.DistilledContrastiveLoss`.
        itm_loss: config of ``ITMLoss``.
        mlm_loss: config of ``MLMLoss`` (masking rates; its cross-entropy is the hard term).
        mask_token_id: the tokenizer's mask token; ``None`` appends one id after its vocabulary.
        text_pretrained: a local HuggingFace BERT folder or file loaded into the text stack (cross-attention
            and anything the file lacks keep their initialisation); the vocabulary must match.
        itm_eval_batch_size: pairs per ITM call when re-ranking.
        with_mlm: build the MLM head (and its momentum copy) and train MLM; False is the official retrieval
            model (``models/model_retrieval.py``: ITC + ITM only, no ``text_encoder.cls``), into which the
            released retrieval checkpoints load strictly.
        data_preprocessor: MMEngine data preprocessor config.
        init_cfg: MMEngine init config.
    """

    def __init__(
        self,
        *,
        image_encoder: dict,
        text_encoder: dict,
        tokenizer: dict | Any,
        embed_dim: int = 256,
        queue_size: int = 65536,
        momentum: float = 0.995,
        alpha: float = 0.4,
        alpha_warmup_iters: int = 0,
        temperature_init: float = 0.07,
        itc_loss: dict | None = None,
        itm_loss: dict | None = None,
        mlm_loss: dict | None = None,
        mask_token_id: int | None = None,
        text_pretrained: str | None = None,
        itm_eval_batch_size: int = 64,
        with_mlm: bool = True,
        data_preprocessor: dict | None = None,
        init_cfg: dict | list[dict] | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if not 0.0 <= momentum < 1.0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(
                f'ALBEF: momentum must be in [0, 1) and alpha in [0, 1], got {momentum}, {alpha}'
            )
        self.tokenizer = TOKENIZERS.build(tokenizer) if isinstance(tokenizer, dict) else tokenizer
        self.visual_encoder = MODELS.build(image_encoder)
        if getattr(self.visual_encoder, 'num_prefix_tokens', 0) != 1:
            raise ValueError('ALBEF: the image encoder needs a class token (MaMMUTViT(class_token=True))')
        vocab = int(self.tokenizer.vocab_size)
        self.mask_token_id = vocab if mask_token_id is None else int(mask_token_id)
        self.vocab_size = vocab + 1 if mask_token_id is None else vocab
        self.text_encoder = BertFusionEncoder(
            **text_encoder,
            vocab_size=self.vocab_size,
            pad_token_id=int(self.tokenizer.pad_token_id),
            context_dim=int(self.visual_encoder.embed_dim),
        )
        if text_pretrained is not None:
            self._load_text(text_pretrained)
        hidden = self.text_encoder.hidden_size
        self.vision_proj = nn.Linear(self.visual_encoder.embed_dim, embed_dim)
        self.text_proj = nn.Linear(hidden, embed_dim)
        self.itm_head = nn.Linear(hidden, 2)
        self.mlm_head = LMHead(hidden, self.vocab_size, eps=1e-12) if with_mlm else None
        self.temp = nn.Parameter(torch.tensor(float(temperature_init)))
        self.itc_loss = MODELS.build(itc_loss or dict(type='DistilledContrastiveLoss'))
        self.itm_loss = MODELS.build(itm_loss or dict(type='ITMLoss'))
        self.mlm_loss = MODELS.build(mlm_loss or dict(type='MLMLoss'))
        self.momentum = float(momentum)
        self.alpha = float(alpha)
        self.alpha_warmup_iters = int(alpha_warmup_iters)
        self.itm_eval_batch_size = int(itm_eval_batch_size)
        self._momentum_parts = _MOMENTUM_PARTS if with_mlm else _MOMENTUM_PARTS[:-1]
        self.momentum_model = nn.ModuleDict(
            {name: copy.deepcopy(getattr(self, name)) for name in self._momentum_parts}
        )
        self.momentum_model.requires_grad_(False)
        self.image_queue = FeatureQueue(queue_size, embed_dim)
        self.text_queue = FeatureQueue(queue_size, embed_dim)
        self.register_buffer('num_updates', torch.zeros((), dtype=torch.long))

    def _load_text(self, path: str) -> None:
        converted, _ = convert_hf_bert(load_hf_bert(path))
        own = self.text_encoder.state_dict()
        for key, value in converted.items():
            if key in own and own[key].shape != value.shape:
                raise ValueError(
                    f'{path}: {key} has shape {tuple(value.shape)}, the model {tuple(own[key].shape)}'
                )
        missing = [key for key in own if key not in converted and 'cross_' not in key]
        if missing:
            raise ValueError(f'{path}: no weights for {missing[:4]}... ({len(missing)} text-layer tensors)')
        self.text_encoder.load_state_dict({k: v for k, v in converted.items() if k in own}, strict=False)

    def init_weights(self) -> None:
        super().init_weights()
        self.copy_to_momentum()

    # ------------------------------------------------------------------------------------------ momentum
    def _momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(getattr(self, name), self.momentum_model[name]) for name in self._momentum_parts]

    @torch.no_grad()
    def copy_to_momentum(self) -> None:
        """Momentum model := online model (ALBEF's ``copy_params``)."""
        for online, ema in self._momentum_pairs():
            ema.load_state_dict(online.state_dict())

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``ema = m * ema + (1 - m) * online`` for every parameter; buffers (BatchNorm statistics) copied."""
        online_params, ema_params = [], []
        for online, ema in self._momentum_pairs():
            online_params += [p.detach() for p in online.parameters()]
            ema_params += list(ema.parameters())
            for b_ema, b_online in zip(ema.buffers(), online.buffers(), strict=True):
                b_ema.copy_(b_online)
        torch._foreach_lerp_(ema_params, online_params, 1.0 - self.momentum)

    def current_alpha(self) -> float:
        if self.alpha_warmup_iters <= 0:
            return self.alpha
        return self.alpha * min(1.0, float(self.num_updates) / self.alpha_warmup_iters)

    # ------------------------------------------------------------------------------------------ encoders
    def _tokenize(
        self, texts: Sequence[str], device: torch.device, full: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Texts -> ``txt_ids`` (B, L), ``txt_mask`` (B, L) bool; L the longest text, or the context length
        with ``full`` (equal shapes on every process for gathering)."""
        txt_ids, txt_mask = self.tokenizer.ids_and_mask(texts, trim=not full)
        return txt_ids.to(device), txt_mask.to(device)

    def image_features(self, images: Tensor, momentum: bool = False) -> tuple[Tensor, Tensor]:
        """``images`` (B, 3, H, W) -> ``img_tokens`` (B, 1 + N, D) and the ITC feature ``img_feat`` (B, E)."""
        encoder = self.momentum_model['visual_encoder'] if momentum else self.visual_encoder
        proj = self.momentum_model['vision_proj'] if momentum else self.vision_proj
        tokens = encoder.forward_all_tokens(images)
        return tokens, F.normalize(proj(tokens[:, 0]), dim=-1)

    def text_features(
        self, txt_ids: Tensor, txt_mask: Tensor, momentum: bool = False
    ) -> tuple[Tensor, Tensor]:
        """``txt_ids`` (B, L) -> unimodal hidden states (B, L, H) and the ITC feature ``txt_feat`` (B, E)."""
        encoder = self.momentum_model['text_encoder'] if momentum else self.text_encoder
        proj = self.momentum_model['text_proj'] if momentum else self.text_proj
        hidden = encoder.encode_text(txt_ids, txt_mask)
        return hidden, F.normalize(proj(hidden[:, 0]), dim=-1)

    def encode_image(self, images: Tensor) -> Tensor:
        return self.image_features(images)[1]

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return self.text_features(*self._tokenize(texts, self.device))[1]

    def current_logit_scale(self) -> Tensor:
        """``1 / temp``, the temperature clamped to [0.001, 0.5] as in training."""
        return 1.0 / self.temp.clamp(0.001, 0.5)

    @property
    def supports_matching(self) -> bool:
        return True

    def match_scores(self, images: Tensor, texts: Sequence[str]) -> Tensor:
        """:meth:`itm_scores` of P pairs ``(images[p], texts[p])``: ``images`` (P, 3, H, W) -> (P,)."""
        txt_ids, txt_mask = self._tokenize(texts, self.device)
        return self.itm_scores(images, [ids[mask] for ids, mask in zip(txt_ids, txt_mask, strict=True)])

    @torch.no_grad()
    def itm_scores(self, images: Tensor, txt_ids: Sequence[Tensor]) -> Tensor:
        """ITM ``logit(match) - logit(no match)`` of P pairs: ``images`` (P, 3, H, W), P unpadded id rows."""
        if len(txt_ids) != images.shape[0]:
            raise ValueError(f'ALBEF.itm_scores: {images.shape[0]} images but {len(txt_ids)} texts')
        device, pad = self.device, int(self.tokenizer.pad_token_id)
        scores = []
        for start in range(0, len(txt_ids), self.itm_eval_batch_size):
            ids, mask = pad_id_rows(txt_ids[start : start + self.itm_eval_batch_size], pad)
            ids, mask = ids.to(device), mask.to(device)
            img_tokens, _ = self.image_features(images[start : start + len(ids)].to(device))
            hidden, _ = self.text_features(ids, mask)
            logits = self.itm_head(self.text_encoder.fuse(hidden, mask, img_tokens)[:, 0]).float()
            scores.append((logits[:, 1] - logits[:, 0]).cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

    # ------------------------------------------------------------------------------------------ modes
    def _forward_tensor(
        self, inputs: Tensor, data_samples: list[BaseDataElement] | None
    ) -> dict[str, Tensor]:
        img_tokens, img_emb = self.image_features(inputs)
        return {'img_tokens': img_tokens, 'img_emb': img_emb}

    def _img_ids(self, data_samples: list[BaseDataElement], device: torch.device) -> Tensor:
        """``img_id`` of every sample (B,); without any, fresh negative ids (each sample its own image, never
        matching a queue entry of another step)."""
        present = ['img_id' in sample for sample in data_samples]
        if all(present):
            return torch.tensor([int(sample.img_id) for sample in data_samples], device=device)
        if any(present):
            raise ValueError('ALBEF: only some training samples carry img_id; all or none must')
        rank, world = world_info()
        size = len(data_samples)
        first = (int(self.num_updates) * world + rank) * size
        return -2 - first - torch.arange(size, device=device)

    def loss(self, inputs: Tensor, data_samples: list[BaseDataElement]) -> dict[str, Tensor]:
        """``loss_itc``, ``loss_itm``, ``loss_mlm`` (``with_mlm``) and logged scalars (``acc_itm``,
        ``acc_mlm``, ``alpha``, ``temp``)."""
        if not data_samples or not all('text' in sample for sample in data_samples):
            raise ValueError('ALBEF: every training sample needs a caption (text)')
        _, world = world_info()
        device = inputs.device
        txt_ids, txt_mask = self._tokenize([s.text for s in data_samples], device, full=world > 1)
        img_ids = self._img_ids(data_samples, device)
        alpha = self.current_alpha()
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        img_tokens, img_feat = self.image_features(inputs)
        txt_hidden, txt_feat = self.text_features(txt_ids, txt_mask)

        with torch.no_grad():
            self.momentum_update()
            img_tokens_m, img_feat_m = self.image_features(inputs, momentum=True)
            _, txt_feat_m = self.text_features(txt_ids, txt_mask, momentum=True)
            all_ids = gather_with_grad(img_ids)
            img_feat_m_all, txt_feat_m_all = gather_with_grad(img_feat_m), gather_with_grad(txt_feat_m)
            valid = self.image_queue.valid
            img_keys = torch.cat([img_feat_m_all, self.image_queue.feats[valid]])
            txt_keys = torch.cat([txt_feat_m_all, self.text_queue.feats[valid]])
            key_ids = torch.cat([all_ids, self.image_queue.ids[valid]])
            positives = img_ids[:, None] == key_ids[None, :]
            logits_i2t_m = img_feat_m @ txt_keys.T / self.temp
            logits_t2i_m = txt_feat_m @ img_keys.T / self.temp
        logits_i2t = img_feat @ txt_keys.T / self.temp
        logits_t2i = txt_feat @ img_keys.T / self.temp
        losses = {
            'loss_itc': self.itc_loss(
                logits_i2t, logits_t2i, positives, positives, logits_i2t_m, logits_t2i_m, alpha=alpha
            )
        }
        losses.update(
            self._fused_losses(
                img_tokens,
                img_tokens_m,
                img_feat,
                txt_ids,
                txt_hidden,
                txt_feat,
                txt_mask,
                img_ids,
                all_ids,
                alpha,
            )
        )

        self.image_queue.enqueue(img_feat_m_all, all_ids)
        self.text_queue.enqueue(txt_feat_m_all, all_ids)
        self.num_updates += 1
        losses['alpha'] = torch.tensor(alpha)
        losses['temp'] = self.temp.detach().clone()
        return losses

    def _fused_losses(
        self,
        img_tokens: Tensor,
        img_tokens_m: Tensor,
        img_feat: Tensor,
        txt_ids: Tensor,
        txt_hidden: Tensor,
        txt_feat: Tensor,
        txt_mask: Tensor,
        img_ids: Tensor,
        all_ids: Tensor,
        alpha: float,
    ) -> dict[str, Tensor]:
        """ITM on positives and global hard negatives, and MLM, through one fusion-encoder call."""
        size = len(img_ids)
        with torch.no_grad():
            sim_i2t = img_feat.detach() @ gather_with_grad(txt_feat.detach()).T / self.temp
            sim_t2i = txt_feat.detach() @ gather_with_grad(img_feat.detach()).T / self.temp
            neg = sample_hard_negatives(sim_i2t, img_ids, logits_t2i=sim_t2i, candidate_img_ids=all_ids)
        all_img_tokens = gather_with_grad(img_tokens)  # gradients reach the image encoder of every process
        all_txt_hidden = gather_with_grad(txt_hidden)
        all_txt_mask = gather_with_grad(txt_mask.long()).bool()
        img_rows = torch.nonzero(neg.img_valid).flatten()  # image i with caption txt_for_img[i]
        txt_rows = torch.nonzero(neg.txt_valid).flatten()  # caption j with image img_for_txt[j]

        pair_img = [img_tokens, img_tokens[img_rows], all_img_tokens[neg.img_for_txt[txt_rows]]]
        pair_txt = [txt_hidden, all_txt_hidden[neg.txt_for_img[img_rows]], txt_hidden[txt_rows]]
        pair_mask = [txt_mask, all_txt_mask[neg.txt_for_img[img_rows]], txt_mask[txt_rows]]
        if self.mlm_head is not None:
            masked_ids, mlm_labels = self._mask(txt_ids, txt_mask)
            pair_img.append(img_tokens)
            pair_txt.append(self.text_encoder.encode_text(masked_ids, txt_mask))
            pair_mask.append(txt_mask)
        fused = self.text_encoder.fuse(torch.cat(pair_txt), torch.cat(pair_mask), torch.cat(pair_img))
        num_itm = size + len(img_rows) + len(txt_rows)

        itm_logits = self.itm_head(fused[:num_itm, 0])
        itm_labels = torch.zeros(num_itm, dtype=torch.long, device=fused.device)
        itm_labels[:size] = 1
        out = {
            'loss_itm': self.itm_loss(itm_logits, itm_labels),
            'acc_itm': (itm_logits.detach().argmax(dim=1) == itm_labels).float().mean(),
        }
        if self.mlm_head is None:
            return out

        chosen = mlm_labels != self.mlm_loss.ignore_index
        logits = self.mlm_head(fused[num_itm:][chosen])  # (P, V): the chosen positions only
        labels = mlm_labels[chosen]
        loss_mlm = self.mlm_loss(logits, labels)
        if alpha > 0:  # the same on every process: global_mean below is a collective
            distill_sum = logits.sum() * 0.0
            if len(labels):
                with torch.no_grad():
                    ema = self.momentum_model
                    hidden_m = ema['text_encoder'](masked_ids, txt_mask, img_tokens_m)
                    soft = F.softmax(ema['mlm_head'](hidden_m[chosen]).float(), dim=-1)
                distill_sum = soft_cross_entropy(logits, soft, reduction='sum')
            distill = global_mean(distill_sum, len(labels))  # over the masked tokens of all processes
            loss_mlm = (1 - alpha) * loss_mlm + alpha * self.mlm_loss.loss_weight * distill
        out['loss_mlm'] = loss_mlm
        correct = (logits.detach().argmax(dim=-1) == labels).float()
        out['acc_mlm'] = correct.mean() if len(correct) else correct.sum()
        return out

    def _mask(self, txt_ids: Tensor, txt_mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.mlm_loss.mask_captions(
            txt_ids,
            txt_mask,
            mask_token_id=self.mask_token_id,
            vocab_size=self.vocab_size,
            tokenizer=self.tokenizer,
        )

    @torch.no_grad()
    def predict(self, inputs: Tensor, data_samples: list[BaseDataElement]) -> list[BaseDataElement]:
        """Sets ``img_emb`` (E,), ``txt_emb`` (K, E) of the ``gt_captions``, ``itm_inputs``, ``itm_scorer``.

        ``itm_scorer`` re-ranks for ``RetrievalMetric(rerank_k=...)``."""
        captions = [list(getattr(sample, 'gt_captions', None) or []) for sample in data_samples]
        img_emb = self.encode_image(inputs).cpu()
        flat = list(itertools.chain.from_iterable(captions))
        if flat:
            txt_ids, txt_mask = self._tokenize(flat, inputs.device)
            txt_emb = self.text_features(txt_ids, txt_mask)[1].cpu()
        start = 0
        for index, sample in enumerate(data_samples):
            sample.img_emb = img_emb[index]
            count = len(captions[index])
            if not count:
                continue
            sample.txt_emb = txt_emb[start : start + count]
            ids = [txt_ids[row][txt_mask[row]] for row in range(start, start + count)]
            sample.itm_inputs = dict(image=inputs[index], txt_ids=ids)
            sample.itm_scorer = ITMScorer(self)
            start += count
        return data_samples

    def extra_repr(self) -> str:
        return f'momentum={self.momentum}, alpha={self.alpha}, queue_size={self.image_queue.size}'
