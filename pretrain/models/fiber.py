"""FIBER: coarse-grained image-text pretraining (ITC + ITM + MLM) and captioning on the fusion backbone.

Paper: Dou et al., "Coarse-to-Fine Vision-Language Pre-training with Fusion in the Backbone" (FIBER), NeurIPS
2022, Sec. 3.2 (coarse-grained pre-training) and Sec. 4.1 (image captioning). Reference code: microsoft/FIBER
``coarse_grained/fiber/modules/{fiber_module,objectives,heads}.py``.

The backbone is :class:`~pretrain.models.fiber_backbone.FIBERBackbone` (Swin + RoBERTa with gated
cross-attention in their last K blocks/layers; FIBER's detector in detection/ reuses it). Per training step,
on B image-caption pairs:

* ITC, fusion off (the backbone is a dual encoder): image embedding = mean of the last-stage Swin tokens after
  its output norm, linearly projected; text embedding = the first (BOS) token's last hidden state, linearly
  projected; both L2-normalised; learnable temperature ``logit_scale`` (init 1 / 0.07, ``exp`` clamped at
  100); symmetric in-batch softmax loss (``InfoNCELoss``, gathered across processes with gradients).
* ITM, fusion on: for each image a negative caption and for each caption a negative image, drawn from the
  batch of all processes with probability softmax(ITC logits) (ALBEF / FIBER hard negatives, never the same
  image: :func:`~pretrain.models.fiber_losses.sample_hard_negatives`); with several processes the ITC
  features, images and captions are gathered (without gradients) so that the candidates are the global
  batch, as with one process; the 2-way head reads tanh poolers of the fused first text token and of the
  mean fused image token (FIBER's ``itm_score`` on ``cls_feats``).
* MLM, fusion on: BERT masking of 15 % of the caption tokens (:class:`~pretrain.models.fiber_losses.MLMLoss`),
  predicted by the LM head from the fused text states at the chosen positions only.

The ITM pairs (up to 3B) and the MLM pairs (B) run through the fused backbone in one call.

Captioning (``caption_loss``): the text attends to the image but not the other way round
(``image_to_text=False, text_to_image=True``) with a causal text mask, so the backbone is a conditional
language model; the same LM head predicts the next token (FIBER's ``infer_caption`` + ``mlm_score``).
Generation reuses :mod:`pretrain.models.generation` (greedy or beam) without a key/value cache: each step
re-runs the backbone on the prefix.

LM head: BERT's prediction head (Linear, GELU, LayerNorm, Linear to the vocabulary with bias), untied from the
input embeddings by default, as FIBER's ``MLMHead``; ``tie_lm_head=True`` shares the output matrix with
RoBERTa's word embeddings (RoBERTa's own MLM layout). The mask token is ``mask_token_id`` (RoBERTa:
``<mask>`` = 50264); ``None`` appends one id after the tokenizer's vocabulary (always, with or without MLM, so
pretraining and captioning checkpoints have the same embedding shapes).

Retrieval (``predict``): dual-encoder ``img_emb`` / ``txt_emb`` for ``RetrievalMetric``; with an ITM head each
sample also carries ``itm_inputs`` (its image and caption ids) and ``itm_scorer`` (:meth:`FIBER.itm_scores`),
which ``RetrievalMetric(rerank_k=k)`` uses to re-rank the top-k of both directions.

What differs from FIBER: no momentum queue (in-batch ITC and ITM negatives over all processes); the MLM head
runs on the chosen positions only; the ITM and MLM passes recompute the Swin's unfused blocks (the backbone
API runs the whole model per call); the caption pass cross-attends to the image tokens entering each fused
block (the backbone's pairing) instead of FIBER's projected final image tokens, so the last Swin block and
its output norm get no gradient from captioning.

Data contract: ``inputs`` (B, 3, H, W) normalised by the data preprocessor; training samples carry ``text``
and ``img_id`` (without ``img_id`` every sample counts as a different image); evaluation samples carry
``gt_captions`` (list[str]) and ``img_id``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from mmengine.structures import BaseDataElement
from torch import Tensor, nn

from toolkit.distributed import gather_with_grad, select_global_rows, world_info
from toolkit.registry import MODELS, TOKENIZERS
from toolkit.tokenizers import pad_id_rows

from .base import VLBaseModel
from .fiber_backbone import FIBERBackbone
from .fiber_losses import sample_hard_negatives
from .generation import GENERATION_KEYS
from .generation import generate as generate_ids
from .image_text_model import ImageTextModel

__all__ = ['FIBER', 'ITMHead', 'ITMScorer', 'LMHead']


class ITMHead(nn.Module):
    """Tanh poolers of the fused text (first token) and image (mean token) states, concatenated -> 2 logits.

    ``forward(txt_cls (P, D_txt), img_pooled (P, D_img))`` -> (P, 2).
    """

    def __init__(self, text_dim: int, image_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.text_pool = nn.Linear(text_dim, hidden_dim)
        self.image_pool = nn.Linear(image_dim, hidden_dim)
        self.fc = nn.Linear(2 * hidden_dim, 2)

    def forward(self, txt_cls: Tensor, img_pooled: Tensor) -> Tensor:
        pooled = torch.cat([self.text_pool(txt_cls).tanh(), self.image_pool(img_pooled).tanh()], dim=-1)
        return self.fc(pooled)


class LMHead(nn.Module):
    """BERT's prediction head: ``(..., D)`` -> ``(..., V)`` logits; ``weight`` ties the output matrix."""

    def __init__(self, dim: int, vocab_size: int, eps: float, weight: nn.Parameter | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.decoder = nn.Linear(dim, vocab_size)
        if weight is not None:
            if weight.shape != self.decoder.weight.shape:
                raise ValueError(f'cannot tie the LM head {self.decoder.weight.shape} to {weight.shape}')
            self.decoder.weight = weight

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))


class _CaptionDecoder:
    """What :mod:`pretrain.models.generation` needs from a decoder (``use_cache=False``): the images are the
    context, every step re-runs the caption pass on the whole prefix and returns the last position's logits
    (B, 1, V) with the mask, padding and BOS ids forbidden."""

    def __init__(self, model: FIBER) -> None:
        self.model = model
        self.vocab_size = model.vocab_size
        self.context_length = int(model.tokenizer.context_length)
        tok = model.tokenizer
        self.forbidden = sorted({model.mask_token_id, tok.pad_token_id, tok.bos_token_id})

    def forward_generative(self, seqs: Tensor, images: Tensor, img_mask: Tensor | None = None) -> Tensor:
        logits = self.model.caption_logits(images, seqs, last_only=True)
        logits[..., self.forbidden] = float('-inf')
        return logits


class ITMScorer:
    """``scorer(images (P, 3, H, W), txt_ids: P id tensors) -> (P,)``: :meth:`FIBER.itm_scores` of one model,
    handed to ``RetrievalMetric(rerank_k=...)`` with the predicted samples (short repr, never pickled)."""

    def __init__(self, model: FIBER) -> None:
        self.model = model

    def __call__(self, images: Tensor, txt_ids: Sequence[Tensor]) -> Tensor:
        return self.model.itm_scores(images, txt_ids)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({type(self.model).__name__}.itm_scores)'


@MODELS.register_module()
class FIBER(VLBaseModel, ImageTextModel):
    """FIBER pretraining / captioning model on ``FIBERBackbone``.

    Args:
        backbone: a :class:`FIBERBackbone`, or its config (built from ``MODELS``; must set ``text`` or
            ``preset``). Unless ``text`` has ``pretrained``, a config's ``vocab_size`` and ``pad_token_id``
            are set from the tokenizer (plus the appended mask id); a built backbone must already match
            them. The last Swin stage must be in ``image.out_indices``.
        tokenizer: config built from ``TOKENIZERS`` (or a built tokenizer).
        embed_dim: E, the ITC embedding size (FIBER: 768, its ``hidden_size``).
        itc_loss: ITC loss config (e.g. ``InfoNCELoss``); ``None`` = no ITC (and no retrieval embeddings).
        itm_loss: ``ITMLoss`` config; ``None`` = no ITM head. Needs ``itc_loss`` (negatives come from ITC).
        mlm_loss: ``MLMLoss`` config (masking rates + weight); ``None`` = no MLM.
        caption_loss: ``CaptionCrossEntropyLoss`` config; ``None`` = no captioning pass.
        mask_token_id: id of the mask token; ``None`` appends one after the tokenizer's vocabulary.
        head_dim: width of the ITM poolers; ``None`` = the text width (FIBER: ``hidden_size``).
        tie_lm_head: tie the LM head's output matrix to the word embeddings (default untied, as FIBER).
        fusion_gate_init: initial value of every cross-attention gate ``alpha``; ``None`` keeps the backbone's
            0, which reproduces pretrained uni-modal backbones exactly (FIBER). From scratch, closed gates
            also block the cross-attention's own gradients (they scale with ``alpha``), so ITM cannot start
            learning until the gates drift open: such configs open them (e.g. 1.0).
        temperature_init: initial ITC temperature (ALBEF / FIBER: 0.07).
        generation: ``dict(method='greedy' | 'beam', max_len=..., beam_size=..., min_len=...,
            length_penalty=...)`` for ``predict`` captions (needs ``caption_loss``); ``None`` = no captions.
        itm_eval_batch_size: pairs per fused pass in :meth:`itm_scores`.
        data_preprocessor: MMEngine data preprocessor config.
        init_cfg: MMEngine init config.
    """

    def __init__(
        self,
        *,
        backbone: FIBERBackbone | dict,
        tokenizer: dict | Any,
        embed_dim: int = 256,
        itc_loss: dict | None = None,
        itm_loss: dict | None = None,
        mlm_loss: dict | None = None,
        caption_loss: dict | None = None,
        mask_token_id: int | None = None,
        head_dim: int | None = None,
        tie_lm_head: bool = False,
        fusion_gate_init: float | None = None,
        temperature_init: float = 0.07,
        generation: dict | None = None,
        itm_eval_batch_size: int = 64,
        data_preprocessor: dict | None = None,
        init_cfg: dict | list[dict] | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if not any(cfg is not None for cfg in (itc_loss, itm_loss, mlm_loss, caption_loss)):
            raise ValueError('FIBER: configure at least one of itc_loss, itm_loss, mlm_loss, caption_loss')
        if itm_loss is not None and itc_loss is None:
            raise ValueError('FIBER: itm_loss draws its hard negatives from ITC; configure itc_loss too')
        if generation is not None:
            if set(generation) - GENERATION_KEYS:
                raise ValueError(
                    f'FIBER: unknown generation keys {sorted(set(generation) - GENERATION_KEYS)}'
                )
            if caption_loss is None:
                raise ValueError('FIBER: generation needs the captioning pass (caption_loss)')
        self.tokenizer = TOKENIZERS.build(tokenizer) if isinstance(tokenizer, dict) else tokenizer
        tok_vocab = int(self.tokenizer.vocab_size)
        self.mask_token_id = tok_vocab if mask_token_id is None else int(mask_token_id)
        self.generation = dict(generation) if generation is not None else None
        self.itm_eval_batch_size = int(itm_eval_batch_size)

        if isinstance(backbone, dict):
            backbone = MODELS.build(self._backbone_cfg(backbone, max(tok_vocab, self.mask_token_id + 1)))
        if not isinstance(backbone, FIBERBackbone):
            raise TypeError(
                f'FIBER: backbone must be a FIBERBackbone or its config, not {type(backbone).__name__}'
            )
        self.backbone: FIBERBackbone = backbone
        self._check_backbone()
        if fusion_gate_init is not None:
            with torch.no_grad():
                for cross_attn in [*self.backbone.image_cross_attn, *self.backbone.text_cross_attn]:
                    cross_attn.alpha.fill_(float(fusion_gate_init))
        text_cfg = self.backbone.text.config
        txt_dim, img_dim = int(text_cfg.hidden_size), int(self.backbone.image.num_features[-1])
        self.vocab_size = int(text_cfg.vocab_size)

        self.itc_loss = MODELS.build(itc_loss) if itc_loss is not None else None
        if self.itc_loss is not None:
            self.img_proj = nn.Linear(img_dim, embed_dim)
            self.txt_proj = nn.Linear(txt_dim, embed_dim)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature_init)))
        self.itm_loss = MODELS.build(itm_loss) if itm_loss is not None else None
        self.itm_head = ITMHead(txt_dim, img_dim, head_dim or txt_dim) if itm_loss is not None else None
        self.mlm_loss = MODELS.build(mlm_loss) if mlm_loss is not None else None
        self.caption_loss = MODELS.build(caption_loss) if caption_loss is not None else None
        if self.mlm_loss is not None or self.caption_loss is not None:
            tied = self.backbone.text.embeddings.word_embeddings.weight if tie_lm_head else None
            self.lm_head = LMHead(txt_dim, self.vocab_size, float(text_cfg.layer_norm_eps), tied)
        else:
            self.lm_head = None
        self._init_heads()

    # ------------------------------------------------------------------------------------------ building
    def _backbone_cfg(self, backbone: dict, vocab_size: int) -> dict:
        cfg = copy.deepcopy(dict(backbone))
        if cfg.get('text') is None and cfg.get('preset') is None:
            raise ValueError('FIBER: backbone needs a text config or a preset')
        text = dict(cfg.get('text') or {})
        if 'pretrained' not in text:  # from scratch: the embedding table follows the tokenizer
            for key, value in (
                ('vocab_size', vocab_size),
                ('pad_token_id', int(self.tokenizer.pad_token_id)),
            ):
                if text.get(key) not in (None, value):
                    raise ValueError(
                        f'FIBER: backbone.text.{key}={text[key]} but the tokenizer needs {value}'
                    )
                text[key] = value
        cfg['text'] = text
        return cfg

    def _check_backbone(self) -> None:
        config, swin = self.backbone.text.config, self.backbone.image
        if self.mask_token_id >= config.vocab_size:
            raise ValueError(
                f'FIBER: mask_token_id={self.mask_token_id} >= text vocab_size={config.vocab_size}'
            )
        if int(config.pad_token_id) != int(self.tokenizer.pad_token_id):
            raise ValueError(
                f'FIBER: RoBERTa pad_token_id={config.pad_token_id} differs from the tokenizer padding id '
                f'{self.tokenizer.pad_token_id} (position ids would be wrong)'
            )
        needed = int(self.tokenizer.context_length) + int(config.pad_token_id) + 1
        if config.max_position_embeddings < needed:
            raise ValueError(
                f'FIBER: max_position_embeddings={config.max_position_embeddings} < {needed}, what a '
                f'{self.tokenizer.context_length}-token context needs (RoBERTa positions start after padding)'
            )
        last = len(swin.stages) - 1
        if last not in swin.out_indices:
            raise ValueError(f'FIBER: backbone.image.out_indices={swin.out_indices} must include {last}')

    def _init_heads(self) -> None:
        """Truncated-normal (std 0.02) linear weights, zero biases (BERT / FIBER ``init_weights``)."""
        heads = [getattr(self, 'img_proj', None), getattr(self, 'txt_proj', None), self.itm_head]
        for head in filter(None, heads):
            for module in head.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    nn.init.zeros_(module.bias)
        if self.lm_head is not None:
            for linear in (self.lm_head.dense, self.lm_head.decoder):
                if linear.weight is not self.backbone.text.embeddings.word_embeddings.weight:
                    nn.init.trunc_normal_(linear.weight, std=0.02)
                nn.init.zeros_(linear.bias)

    # ------------------------------------------------------------------------------------------ pieces
    def _tokenize(self, texts: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """Texts -> ``txt_ids`` (B, L) and ``txt_mask`` (B, L) bool, L the longest text of the batch."""
        txt_ids, txt_mask = self.tokenizer.ids_and_mask(texts)
        return txt_ids.to(device), txt_mask.to(device)

    def current_logit_scale(self) -> Tensor:
        """``exp(logit_scale)`` clamped at 100 (temperature >= 0.01)."""
        return self.logit_scale.exp().clamp(max=100.0)

    @staticmethod
    def _pooled_image(image_feats: tuple[Tensor, ...]) -> Tensor:
        """Mean of the normed last-stage map (B, C, H, W) -> (B, C)."""
        return image_feats[-1].mean(dim=(2, 3))

    def image_embedding(self, images: Tensor) -> Tensor:
        """Dual-encoder image embedding (fusion off): ``images`` (B, 3, H, W) -> ``img_emb`` (B, E)."""
        return F.normalize(
            self.img_proj(self._pooled_image(self.backbone.encode_image(images).image_feats)), dim=-1
        )

    def text_embedding(self, txt_ids: Tensor, txt_mask: Tensor) -> Tensor:
        """Dual-encoder text embedding (fusion off, first token): ``txt_ids`` (B, L) -> ``txt_emb`` (B, E)."""
        return F.normalize(self.txt_proj(self.backbone.encode_text(txt_ids, txt_mask)[:, 0]), dim=-1)

    def encode_image(self, images: Tensor) -> Tensor:
        """``images`` (B, 3, H, W) -> ``img_emb`` (B, E), L2-normalised (:meth:`image_embedding`)."""
        return self.image_embedding(images)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """List of B texts -> ``txt_emb`` (B, E), L2-normalised."""
        return self.text_embedding(*self._tokenize(texts, self.device))

    @property
    def supports_embedding(self) -> bool:
        return self.itc_loss is not None

    @property
    def supports_captioning(self) -> bool:
        return self.caption_loss is not None

    @property
    def supports_matching(self) -> bool:
        return self.itm_head is not None

    def match_scores(self, images: Tensor, texts: Sequence[str]) -> Tensor:
        """:meth:`itm_scores` of P pairs ``(images[p], texts[p])``: ``images`` (P, 3, H, W) -> (P,)."""
        txt_ids, txt_mask = self._tokenize(texts, self.device)
        return self.itm_scores(images, [ids[mask] for ids, mask in zip(txt_ids, txt_mask, strict=True)])

    def itm_logits(self, images: Tensor, txt_ids: Tensor, txt_mask: Tensor) -> Tensor:
        """Fused pass on aligned pairs -> ITM logits (P, 2)."""
        out = self.backbone(images, txt_ids, txt_mask, fusion=True)
        return self.itm_head(out.text_hidden[:, 0], self._pooled_image(out.image_feats))

    @torch.no_grad()
    def itm_scores(self, images: Tensor, txt_ids: Sequence[Tensor]) -> Tensor:
        """Matching score ``logit(match) - logit(no match)`` of P pairs, run in chunks on the model's device.

        Args:
            images: (P, 3, H, W) preprocessed images.
            txt_ids: P unpadded id sequences (BOS ... EOS).
        """
        if self.itm_head is None:
            raise RuntimeError('FIBER: this model has no ITM head (itm_loss is None)')
        if len(txt_ids) != images.shape[0]:
            raise ValueError(f'FIBER.itm_scores: {images.shape[0]} images but {len(txt_ids)} texts')
        device, pad = self.device, int(self.tokenizer.pad_token_id)
        scores = []
        for start in range(0, len(txt_ids), self.itm_eval_batch_size):
            ids, mask = pad_id_rows(txt_ids[start : start + self.itm_eval_batch_size], pad)
            batch = images[start : start + len(ids)].to(device)
            logits = self.itm_logits(batch, ids.to(device), mask.to(device)).float()
            scores.append((logits[:, 1] - logits[:, 0]).cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

    def caption_logits(self, images: Tensor, txt_ids: Tensor, *, last_only: bool = False) -> Tensor:
        """Caption pass (text attends to the image, causal text): ``txt_ids`` (B, T) -> logits (B, T, V), or
        (B, 1, V) of the last position with ``last_only``."""
        if self.lm_head is None:
            raise RuntimeError('FIBER: this model has no LM head (neither mlm_loss nor caption_loss)')
        txt_mask = txt_ids != self.tokenizer.pad_token_id
        out = self.backbone(
            images, txt_ids, txt_mask, fusion=True, image_to_text=False, text_to_image=True, causal_text=True
        )
        hidden = out.text_hidden[:, -1:] if last_only else out.text_hidden
        return self.lm_head(hidden)

    def generate(self, images: Tensor, **kwargs: Any) -> list[str]:
        """Captions of ``images`` (B, 3, H, W); ``kwargs`` override ``generation``."""
        options = {'method': 'greedy', 'max_len': 30, **(self.generation or {}), **kwargs}
        method = options.pop('method')
        ids = generate_ids(
            _CaptionDecoder(self),
            images,
            method=method,
            bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            use_cache=False,
            **options,
        )
        return self.tokenizer.batch_decode(ids.cpu())

    # ------------------------------------------------------------------------------------------ modes
    @staticmethod
    def _img_ids(data_samples: list[BaseDataElement], device: torch.device) -> Tensor:
        """``img_id`` of every sample (B,); without any, each sample is its own image (ids distinct across
        processes, which share ITM candidates)."""
        present = ['img_id' in sample for sample in data_samples]
        if not any(present):
            rank, _ = world_info()
            return torch.arange(len(data_samples), device=device) + rank * len(data_samples)
        if not all(present):
            raise ValueError('FIBER: only some training samples carry img_id; all or none must')
        return torch.tensor([int(sample.img_id) for sample in data_samples], device=device)

    def loss(self, inputs: Tensor, data_samples: list[BaseDataElement]) -> dict[str, Tensor]:
        """``loss_itc``, ``loss_itm``, ``loss_mlm``, ``loss_caption`` (those configured), logged scalars."""
        if not data_samples or not all('text' in sample for sample in data_samples):
            raise ValueError('FIBER: every training sample needs a caption (text)')
        txt_ids, txt_mask = self._tokenize([sample.text for sample in data_samples], inputs.device)
        out: dict[str, Tensor] = {}
        fused: list[tuple[str, Tensor, Tensor, Tensor, Tensor]] = []  # (task, images, ids, mask, labels)
        if self.itc_loss is not None:
            logits_i2t, itc_feats, itc_out = self._itc(inputs, txt_ids, txt_mask)
            out.update(itc_out)
            if self.itm_head is not None:
                pairs = self._itm_pairs(inputs, txt_ids, txt_mask, logits_i2t, data_samples, itc_feats)
                fused.append(('itm', *pairs))
        if self.mlm_loss is not None:
            masked_ids, mlm_labels = self._mask(txt_ids, txt_mask)
            fused.append(('mlm', inputs, masked_ids, txt_mask, mlm_labels))
        if fused:
            out.update(self._fused_losses(fused))
        if self.caption_loss is not None:
            out.update(self._caption(inputs, txt_ids, txt_mask))
        return out

    def _itc(
        self, images: Tensor, txt_ids: Tensor, txt_mask: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor], dict[str, Tensor]]:
        """Local ``logits_i2t`` (B, B) and the detached ``img_emb`` (B, E), ``txt_emb`` (B, E) and scale (they
        weigh the ITM hard negatives, :meth:`_itm_pairs`), and the ITC loss with logged scalars."""
        img_emb = self.image_embedding(images)
        txt_emb = self.text_embedding(txt_ids, txt_mask)
        scale = self.current_logit_scale()
        loss = self.itc_loss(img_emb, txt_emb, scale)
        with torch.no_grad():
            logits_i2t = scale * img_emb.float() @ txt_emb.float().t()  # (B, B) local
            target = torch.arange(len(logits_i2t), device=logits_i2t.device)
            logged = {
                'loss_itc': loss,
                'logit_scale': scale.detach(),
                'acc_i2t': (logits_i2t.argmax(dim=1) == target).float().mean(),
                'acc_t2i': (logits_i2t.argmax(dim=0) == target).float().mean(),
            }
        return logits_i2t, (img_emb.detach(), txt_emb.detach(), scale.detach()), logged

    @torch.no_grad()
    def _itm_pairs(
        self,
        images: Tensor,
        txt_ids: Tensor,
        txt_mask: Tensor,
        logits_i2t: Tensor,
        samples: list,
        itc_feats: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """B positives, then a hard-negative caption per image and a hard-negative image per caption (where
        one exists) from the global batch: images, ids, masks and labels (1 = match) of up to 3B pairs.

        With one process the local ``logits_i2t`` (B, B) weigh the candidates. With W > 1 the candidates'
        ITC features (``itc_feats``: ``img_emb``, ``txt_emb``, scale) and image ids are gathered, and the
        drawn negative images and captions (padded to the context length) fetched from their processes, all
        without gradients: the fused pass of a pair runs on the process of its anchor, so nothing needs to
        flow back to the process a negative came from."""
        img_ids = self._img_ids(samples, images.device)
        _, world = world_info()
        if world == 1:
            neg = sample_hard_negatives(logits_i2t, img_ids)
        else:
            if itc_feats is None:
                raise ValueError('FIBER._itm_pairs: with several processes the ITC features are needed')
            img_emb, txt_emb, scale = (feat.float() for feat in itc_feats)
            width = int(self.tokenizer.context_length)
            pad = int(self.tokenizer.pad_token_id)
            txt_ids = F.pad(txt_ids, (0, width - txt_ids.shape[1]), value=pad)
            txt_mask = F.pad(txt_mask, (0, width - txt_mask.shape[1]), value=False)
            neg = sample_hard_negatives(
                scale * img_emb @ gather_with_grad(txt_emb).t(),
                img_ids,
                logits_t2i=scale * txt_emb @ gather_with_grad(img_emb).t(),
                candidate_img_ids=gather_with_grad(img_ids),
            )
        img_rows = torch.nonzero(neg.img_valid).flatten()  # image i with candidate caption txt_for_img[i]
        txt_rows = torch.nonzero(neg.txt_valid).flatten()  # caption j with candidate image img_for_txt[j]
        txt_for_img, img_for_txt = neg.txt_for_img[img_rows], neg.img_for_txt[txt_rows]
        pair_images = torch.cat([images, images[img_rows], select_global_rows(images, img_for_txt)])
        pair_ids = torch.cat([txt_ids, select_global_rows(txt_ids, txt_for_img), txt_ids[txt_rows]])
        neg_mask = select_global_rows(txt_mask.long(), txt_for_img).bool()
        pair_mask = torch.cat([txt_mask, neg_mask, txt_mask[txt_rows]])
        labels = torch.zeros(len(pair_images), dtype=torch.long, device=images.device)
        labels[: len(images)] = 1
        return pair_images, pair_ids, pair_mask, labels

    def _mask(self, txt_ids: Tensor, txt_mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.mlm_loss.mask_captions(
            txt_ids,
            txt_mask,
            mask_token_id=self.mask_token_id,
            vocab_size=self.vocab_size,
            tokenizer=self.tokenizer,
        )

    def _fused_losses(self, fused: list[tuple[str, Tensor, Tensor, Tensor, Tensor]]) -> dict[str, Tensor]:
        """One fused backbone call on the concatenated ITM and MLM pairs, then each task's head and loss.

        ``fused`` holds ``(task, images (P, 3, H, W), ids (P, L), mask (P, L), labels)`` per task: ITM labels
        (P,) in {0, 1}, MLM labels (P, L) with ``ignore_index`` at the positions not predicted.
        """
        width = max(ids.shape[1] for _, _, ids, _, _ in fused)
        pad = int(self.tokenizer.pad_token_id)
        out = self.backbone(
            torch.cat([images for _, images, _, _, _ in fused]),
            torch.cat([F.pad(ids, (0, width - ids.shape[1]), value=pad) for _, _, ids, _, _ in fused]),
            torch.cat([F.pad(mask, (0, width - mask.shape[1]), value=False) for _, _, _, mask, _ in fused]),
            fusion=True,
        )
        pooled_img = self._pooled_image(out.image_feats)
        losses: dict[str, Tensor] = {}
        start = 0
        for task, _, ids, _, labels in fused:
            rows = slice(start, start + len(ids))
            start += len(ids)
            if task == 'itm':
                logits = self.itm_head(out.text_hidden[rows, 0], pooled_img[rows])
                losses['loss_itm'] = self.itm_loss(logits, labels)
                losses['acc_itm'] = (logits.detach().argmax(dim=1) == labels).float().mean()
                continue
            labels = F.pad(labels, (0, width - labels.shape[1]), value=self.mlm_loss.ignore_index)
            chosen = labels != self.mlm_loss.ignore_index
            logits = self.lm_head(out.text_hidden[rows][chosen])  # (P, V): the chosen positions only
            losses['loss_mlm'] = self.mlm_loss(logits, labels[chosen])
            correct = (logits.detach().argmax(dim=-1) == labels[chosen]).float()
            losses['acc_mlm'] = correct.mean() if len(correct) else correct.sum()
        return losses

    def _caption(self, images: Tensor, txt_ids: Tensor, txt_mask: Tensor) -> dict[str, Tensor]:
        logits = self.caption_logits(images, txt_ids[:, :-1])
        targets = txt_ids[:, 1:].masked_fill(~txt_mask[:, 1:], self.caption_loss.ignore_index)
        loss = self.caption_loss(logits, targets)
        with torch.no_grad():
            valid = targets != self.caption_loss.ignore_index
            correct = (logits.argmax(dim=-1) == targets) & valid
            acc = correct.sum().float() / valid.sum().clamp(min=1).float()
        return {'loss_caption': loss, 'acc_caption': acc}

    @torch.no_grad()
    def predict(self, inputs: Tensor, data_samples: list[BaseDataElement]) -> list[BaseDataElement]:
        """Sets ``img_emb`` (E,) and ``txt_emb`` (K, E) of the ``gt_captions`` (with ITC), ``itm_inputs`` and
        ``itm_scorer`` (with ITM, for ``RetrievalMetric(rerank_k=...)``) and ``pred_caption`` (with
        generation)."""
        captions = [list(getattr(sample, 'gt_captions', None) or []) for sample in data_samples]
        if self.itc_loss is not None:
            img_emb = self.image_embedding(inputs).cpu()
            flat = [text for texts in captions for text in texts]
            txt_ids, txt_mask = self._tokenize(flat, inputs.device) if flat else (None, None)
            txt_emb = self.text_embedding(txt_ids, txt_mask).cpu() if flat else None
            start = 0
            for index, sample in enumerate(data_samples):
                sample.img_emb = img_emb[index]
                count = len(captions[index])
                if not count:
                    continue
                sample.txt_emb = txt_emb[start : start + count]
                if self.itm_head is not None:
                    rows = range(start, start + count)
                    ids = [txt_ids[row][txt_mask[row]] for row in rows]
                    sample.itm_inputs = dict(image=inputs[index], txt_ids=ids)
                    sample.itm_scorer = ITMScorer(self)
                start += count
        if self.generation is not None and self.generation.get('method', 'greedy') != 'none':
            for sample, caption in zip(data_samples, self.generate(inputs), strict=True):
                sample.pred_caption = caption
        return data_samples

    def _forward_tensor(
        self, inputs: Tensor, data_samples: list[BaseDataElement] | None
    ) -> dict[str, Tensor]:
        out = self.backbone.encode_image(inputs)
        result = {'img_tokens': rearrange(out.image_feats[-1], 'b c h w -> b (h w) c')}
        if self.itc_loss is not None:
            result['img_emb'] = F.normalize(self.img_proj(self._pooled_image(out.image_feats)), dim=-1)
            if data_samples and all('text' in sample for sample in data_samples):
                result['txt_emb'] = self.encode_text([sample.text for sample in data_samples])
        return result
