"""MaMMUT: one image encoder and one text decoder trained with two passes.

Paper: Kuo et al., "MaMMUT: A Simple Architecture for Joint Learning for MultiModal Tasks", TMLR 2023, Sec. 3:
a ViT encodes the image; a single text decoder runs a contrastive pass (bidirectional, no cross-attention,
pooled text embedding) and a generative pass (causal, cross-attending to the image tokens, captioning loss).
The two passes run in a random order each step and their losses are summed (one backward). Focal contrastive
loss and cropped positional embeddings come from RO-ViT (Kim et al., CVPR 2023).

What differs from the paper: the image embedding pools the ViT tokens (mean, or a learned-query attention pool
with ``pool='attn'``) and projects them linearly; the image tokens are linearly projected to the decoder width
when widths differ; the logged contrastive accuracies use the local batch only. With ``contrastive_only`` the
decoder is built without cross-attention or LM head (every parameter is used, no DDP
``find_unused_parameters`` needed): the pure contrastive baseline.

Video (MaMMUT Sec. 3.3, TubeViT): with a ``video_tokenizer`` (``SparseTubeTokenizer``, in
:mod:`pretrain.models.tube_tokenizer`), clips (B, 3, T, H, W) are tokenized into sparse tubes and strided 2D
patches and run through the SAME ViT; everything after the ViT is shared with images. The tubes are
initialised from the ViT's linear patch embedding, also when an image-only checkpoint is loaded (a
load-state-dict hook fills in the missing tube weights from the checkpoint's patch embedding); with a
convolutional stem they start from random weights.

Open-ended (video) question answering is the generative pass with the question as a prefix: the decoder reads
``[bos] question answer [eos]``, the loss covers the answer and EOS only, and prediction forces the question
and generates the answer greedily.

Data contract: ``inputs`` (B, 3, H, W) images or (B, 3, T, H, W) clips, normalised by the data preprocessor;
training samples carry ``text`` (str), optionally ``negative_text`` (a hard negative caption, see
``SwapWordNegative``), or ``question`` and ``gt_answer``; evaluation samples carry
``gt_captions`` (list[str]) and ``img_id``, or ``question`` (then ``pred_answer`` is predicted).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.structures import BaseDataElement
from torch import Tensor, nn

from toolkit.registry import MODELS, TOKENIZERS

from .base import VLBaseModel
from .generation import GENERATION_KEYS
from .generation import generate as generate_ids
from .image_text_model import ImageTextModel
from .text_decoder import CrossAttention
from .tube_tokenizer import SparseTubeTokenizer
from .vit import MaMMUTViT

__all__ = ['AttentionPool', 'MaMMUT']

_TUBE_KEY = 'video_tokenizer.tubes.'
_PATCH_KEY = 'image_encoder.patch_embed.'


class AttentionPool(nn.Module):
    """One learned query attending to the image tokens: (B, N, D) -> (B, D)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, num_heads)

    def forward(self, img_tokens: Tensor) -> Tensor:
        kv = self.attn.image_kv(self.norm(img_tokens))
        return self.attn(self.query.expand(img_tokens.shape[0], -1, -1), kv)[:, 0]


@MODELS.register_module()
class MaMMUT(VLBaseModel, ImageTextModel):
    """MaMMUT pretraining model (contrastive + captioning with one decoder).

    Args:
        image_encoder: the :class:`MaMMUTViT`, or its config; returns ``img_tokens`` (B, N, D_img).
        text_decoder: config of ``MaMMUTTextDecoder``; ``vocab_size`` comes from the tokenizer,
            ``context_length`` defaults to the tokenizer's and ``embed_dim`` is set to ``embed_dim``.
        tokenizer: config built from ``TOKENIZERS`` (an already built tokenizer object is accepted too).
        contrastive_loss: config; ``None`` uses ``FocalContrastiveLoss`` (the paper's choice).
        caption_loss: config; ``None`` uses ``CaptionCrossEntropyLoss``.
        embed_dim: E, size of the joint embedding space.
        pool: image pooling, ``'avg'`` or ``'attn'``.
        pool_norm: a LayerNorm on the pooled image feature before ``img_proj`` (openMaMMUT: ``ln_post`` after
            the mean of the un-normed ViT tokens, ``final_ln_after_pool``).
        img_ctx_proj: the map of image tokens to the decoder width: ``'auto'`` (a linear layer with bias when
            the widths differ, else none) or ``'linear_no_bias'`` (always a bias-free linear layer,
            openMaMMUT's ``map_viz2txt_kv``).
        txt_proj: project the pooled text feature to ``embed_dim``; ``False`` (openMaMMUT) needs the decoder
            width to equal ``embed_dim``.
        shuffle_passes: draw the order of the two passes from torch's RNG each step.
        contrastive_only: train the contrastive pass only (decoder without cross-attention / LM head).
        generation: ``dict(method='greedy' | 'beam' | 'none', beam_size=..., max_len=..., min_len=...,
            length_penalty=...)`` used by ``predict``; ``None`` skips captioning.
        logit_scale_init: initial temperature ``exp(logit_scale)`` (CLIP: 1 / 0.07); clamped at 100.
        logit_bias_init: initial bias of the sigmoid (focal) form (SigLIP: -10).
        video_tokenizer: the clip tokenizer (:class:`SparseTubeTokenizer`), or its config, whose
            ``embed_dim`` and ``patch_size`` default to the image encoder's. ``None``: images only.
        answer_max_len: most answer tokens generated for a question.
        data_preprocessor: MMEngine data preprocessor config.
        init_cfg: MMEngine init config.
    """

    def __init__(
        self,
        *,
        image_encoder: MaMMUTViT | dict,
        text_decoder: dict,
        tokenizer: dict | Any,
        contrastive_loss: dict | None = None,
        caption_loss: dict | None = None,
        embed_dim: int,
        pool: str = 'avg',
        pool_norm: bool = False,
        img_ctx_proj: str = 'auto',
        txt_proj: bool = True,
        shuffle_passes: bool = True,
        contrastive_only: bool = False,
        generation: dict | None = None,
        logit_scale_init: float = 1 / 0.07,
        logit_bias_init: float = -10.0,
        video_tokenizer: SparseTubeTokenizer | dict | None = None,
        answer_max_len: int = 5,
        data_preprocessor: dict | None = None,
        init_cfg: dict | list[dict] | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if pool not in ('avg', 'attn'):
            raise ValueError(f"pool must be 'avg' or 'attn', got {pool!r}")
        if img_ctx_proj not in ('auto', 'linear_no_bias'):
            raise ValueError(f"img_ctx_proj must be 'auto' or 'linear_no_bias', got {img_ctx_proj!r}")
        if generation is not None and set(generation) - GENERATION_KEYS:
            raise ValueError(f'unknown generation keys {sorted(set(generation) - GENERATION_KEYS)}')
        self.tokenizer = TOKENIZERS.build(tokenizer) if isinstance(tokenizer, dict) else tokenizer
        self.embed_dim = embed_dim
        self.pool = pool
        self.txt_proj = txt_proj
        self.shuffle_passes = shuffle_passes
        self.contrastive_only = contrastive_only
        self.generation = dict(generation) if generation is not None else None
        self.answer_max_len = answer_max_len

        if isinstance(image_encoder, dict):
            image_encoder = MODELS.build(image_encoder)
        if not isinstance(image_encoder, MaMMUTViT):
            raise TypeError(
                f'MaMMUT: image_encoder must be a MaMMUTViT or its config, not {type(image_encoder)}'
            )
        self.image_encoder: MaMMUTViT = image_encoder
        img_dim = int(self.image_encoder.embed_dim)
        self.video_tokenizer: SparseTubeTokenizer | None
        if video_tokenizer is not None:
            if isinstance(video_tokenizer, dict):
                cfg = dict(video_tokenizer)
                cfg.setdefault('embed_dim', img_dim)
                cfg.setdefault('patch_size', int(self.image_encoder.patch_size))
                video_tokenizer = MODELS.build(cfg)
            if not isinstance(video_tokenizer, SparseTubeTokenizer):
                kind = type(video_tokenizer)
                raise TypeError(
                    f'MaMMUT: video_tokenizer must be a SparseTubeTokenizer or its config, not {kind}'
                )
            self.video_tokenizer = video_tokenizer
            patch = self._linear_patch_embed()
            if patch is not None:
                self.video_tokenizer.inflate_patch_kernel(patch.weight, patch.bias)
            self._register_load_state_dict_pre_hook(self._inflate_missing_tubes)
        else:
            self.video_tokenizer = None
        self.text_decoder = MODELS.build(self._decoder_cfg(text_decoder))
        dec_width = int(self.text_decoder.width)

        if pool == 'attn':
            blocks = self.image_encoder.blocks
            heads = blocks[0].attn.num_heads if len(blocks) else 1
            self.img_pool = AttentionPool(img_dim, heads)
        else:
            self.img_pool = None
        self.img_pool_norm = nn.LayerNorm(img_dim) if pool_norm else None
        self.img_proj = nn.Linear(img_dim, embed_dim, bias=False)
        nn.init.normal_(self.img_proj.weight, std=img_dim**-0.5)
        if contrastive_only:
            self.img_ctx_proj = None
        elif img_ctx_proj == 'linear_no_bias':
            self.img_ctx_proj = nn.Linear(img_dim, dec_width, bias=False)
        else:
            self.img_ctx_proj = nn.Linear(img_dim, dec_width) if img_dim != dec_width else nn.Identity()

        self.contrastive_loss = MODELS.build(contrastive_loss or dict(type='FocalContrastiveLoss'))
        self.caption_loss = (
            None if contrastive_only else MODELS.build(caption_loss or dict(type='CaptionCrossEntropyLoss'))
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        if getattr(self.contrastive_loss, 'uses_bias', False):
            self.logit_bias = nn.Parameter(torch.tensor(float(logit_bias_init)))
        else:
            self.logit_bias = None

    def _decoder_cfg(self, text_decoder: dict) -> dict:
        cfg = dict(text_decoder)
        vocab = int(self.tokenizer.vocab_size)
        if cfg.get('vocab_size') not in (None, vocab):
            raise ValueError(f'text_decoder.vocab_size={cfg["vocab_size"]} but the tokenizer has {vocab} ids')
        if cfg.get('embed_dim') not in (None, self.embed_dim):
            raise ValueError(
                f'text_decoder.embed_dim={cfg["embed_dim"]} differs from embed_dim={self.embed_dim}'
            )
        context = int(self.tokenizer.context_length)
        cfg.setdefault('context_length', context)
        if cfg['context_length'] < context:
            raise ValueError(
                f'text_decoder.context_length={cfg["context_length"]} < tokenizer context {context}'
            )
        cfg.update(vocab_size=vocab, embed_dim=self.embed_dim if self.txt_proj else None)
        if not self.txt_proj and cfg.get('width', 512) != self.embed_dim:
            raise ValueError(f'txt_proj=False needs text_decoder.width == embed_dim={self.embed_dim}')
        if self.contrastive_only:
            cfg.update(cross_attn_layers='none', tie_embeddings=True)
        return cfg

    def _linear_patch_embed(self) -> nn.Conv2d | None:
        patch = self.image_encoder.patch_embed
        return patch if isinstance(patch, nn.Conv2d) else None

    def _inflate_missing_tubes(self, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        """Load-state-dict pre-hook: an image checkpoint (patch embedding, no tubes) initialises the tubes."""
        if any(key.startswith(prefix + _TUBE_KEY) for key in state_dict):
            return
        weight = state_dict.get(prefix + _PATCH_KEY + 'weight')
        if weight is None or weight.dim() != 4 or self._linear_patch_embed() is None:
            return
        bias = state_dict.get(prefix + _PATCH_KEY + 'bias')
        inflated = self.video_tokenizer.inflated_state(weight, bias)
        state_dict.update({prefix + _TUBE_KEY + key: value for key, value in inflated.items()})

    # ------------------------------------------------------------------ building blocks
    def _tokenize(self, texts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """Texts -> ``txt_ids`` (B, L) and ``lengths`` (B,) on ``device``.

        L is the longest text of the batch (at most the tokenizer's context length): the padding
        beyond it would only be masked out, so both passes skip it.
        """
        txt_ids = self.tokenizer(list(texts))
        lengths = self.tokenizer.lengths(txt_ids)
        txt_ids = txt_ids[:, : int(lengths.max())]
        return txt_ids.to(device), lengths.to(device)

    def current_logit_scale(self) -> Tensor:
        """``exp(logit_scale)`` clamped at 100 (CLIP)."""
        return self.logit_scale.exp().clamp(max=100.0)

    def image_embedding(self, img_tokens: Tensor) -> Tensor:
        """``img_tokens`` (B, N, D_img) -> L2-normalised ``img_emb`` (B, E)."""
        pooled = self.img_pool(img_tokens) if self.img_pool is not None else img_tokens.mean(dim=1)
        if self.img_pool_norm is not None:
            pooled = self.img_pool_norm(pooled)
        return F.normalize(self.img_proj(pooled), dim=-1)

    def text_embedding(self, txt_ids: Tensor, lengths: Tensor) -> Tensor:
        """Contrastive pass: ``txt_ids`` (B, L) -> L2-normalised ``txt_emb`` (B, E); the image is not used.

        A decoder pooling every position (``contrastive_pool='mean_all'``, openMaMMUT) sees the ids padded to
        the tokenizer's context length, as the tokenizer lays them out.
        """
        context = int(self.tokenizer.context_length)
        if self.text_decoder.contrastive_pool == 'mean_all' and txt_ids.shape[1] < context:
            txt_ids = F.pad(txt_ids, (0, context - txt_ids.shape[1]), value=self.tokenizer.pad_token_id)
        return F.normalize(self.text_decoder.forward_contrastive(txt_ids, lengths), dim=-1)

    def image_context(self, img_tokens: Tensor) -> Tensor:
        """Image tokens at the decoder width (B, N, W) for cross-attention."""
        if self.img_ctx_proj is None:
            raise RuntimeError('contrastive_only MaMMUT has no generative pass')
        return self.img_ctx_proj(img_tokens)

    def visual_tokens(self, inputs: Tensor) -> Tensor:
        """ViT tokens (B, N, D_img) of images (B, 3, H, W) or, through the video tokenizer, of clips
        (B, 3, T, H, W)."""
        if inputs.dim() == 4:
            return self.image_encoder(inputs)
        if inputs.dim() != 5:
            shape = tuple(inputs.shape)
            raise ValueError(f'expected images (B, C, H, W) or clips (B, C, T, H, W), got {shape}')
        if self.video_tokenizer is None:
            raise ValueError('got clips (B, C, T, H, W) but this MaMMUT has no video_tokenizer')
        return self.image_encoder.forward_embedded(self.video_tokenizer(inputs, self.image_encoder))

    def encode_image(self, images: Tensor) -> Tensor:
        """``images`` (B, 3, H, W) or clips (B, 3, T, H, W) -> ``img_emb`` (B, E), L2-normalised."""
        return self.image_embedding(self.visual_tokens(images))

    def encode_text(self, texts: list[str]) -> Tensor:
        """List of B texts -> ``txt_emb`` (B, E), L2-normalised."""
        txt_ids, lengths = self._tokenize(texts, self.logit_scale.device)
        return self.text_embedding(txt_ids, lengths)

    @property
    def supports_captioning(self) -> bool:
        """Captions unless ``contrastive_only`` (no generative pass)."""
        return not self.contrastive_only

    def generate(self, images: Tensor, **kwargs: Any) -> list[str]:
        """Captions of images or clips; ``kwargs`` override ``generation`` (method, beam_size...)."""
        return self._generate_from_tokens(self.visual_tokens(images), **kwargs)

    def answer(self, inputs: Tensor, questions: list[str]) -> list[str]:
        """Greedy open-ended answers to one question per image or clip."""
        return self._answer_from_tokens(self.visual_tokens(inputs), questions)

    def generate_and_answer(
        self, inputs: Tensor, questions: list[str], **kwargs: Any
    ) -> tuple[list[str], list[str]]:
        """Captions of images or clips and greedy answers to one question each, from one encoder pass;
        ``kwargs`` override ``generation`` for the captions, as in :meth:`generate`."""
        img_tokens = self.visual_tokens(inputs)
        return self._generate_from_tokens(img_tokens, **kwargs), self._answer_from_tokens(
            img_tokens, questions
        )

    def _qa_ids(
        self, questions: list[str], answers: list[str] | None, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """``[bos] question (answer [eos])`` ids (B, L) padded, and the prefix length (B,) (BOS + question).

        The question is cut from its end if question and answer do not fit the context.
        """
        tok, context = self.tokenizer, int(self.tokenizer.context_length)
        rows, prefix = [], []
        for index, question in enumerate(questions):
            if answers is None:  # room for the answer to be generated
                tail, room = [], context - 1 - self.answer_max_len
            else:
                a_ids = tok.encode(answers[index])[: context - 2]
                tail, room = [*a_ids, tok.eos_token_id], max(0, context - 2 - len(a_ids))
            head = [tok.bos_token_id, *tok.encode(question)[:room]]
            prefix.append(len(head))
            rows.append(head + tail)
        ids = torch.full((len(rows), max(map(len, rows))), tok.pad_token_id, dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids.to(device), torch.tensor(prefix, dtype=torch.long, device=device)

    def _answer_from_tokens(self, img_tokens: Tensor, questions: list[str]) -> list[str]:
        ids, prefix = self._qa_ids(questions, None, img_tokens.device)
        out = generate_ids(
            self.text_decoder,
            self.image_context(img_tokens),
            method='greedy',
            bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            max_len=self.answer_max_len,
            prefix_ids=ids[:, 1:],
            prefix_lengths=prefix - 1,
        )
        return [self.tokenizer.decode(row[int(p) :]) for row, p in zip(out.cpu(), prefix.cpu(), strict=True)]

    def _generate_from_tokens(self, img_tokens: Tensor, **kwargs: Any) -> list[str]:
        options = {'method': 'greedy', 'max_len': 30, **(self.generation or {}), **kwargs}
        method = options.pop('method')
        ids = generate_ids(
            self.text_decoder,
            self.image_context(img_tokens),
            method=method,
            bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            **options,
        )
        return self.tokenizer.batch_decode(ids.cpu())

    # ------------------------------------------------------------------ modes
    def draw_pass_order(self) -> bool:
        """Whether the contrastive pass runs first this step (torch's RNG when shuffling)."""
        if self.shuffle_passes and not self.contrastive_only:
            return bool(torch.randint(0, 2, ()).item())
        return True

    @staticmethod
    def _has_field(data_samples: list[BaseDataElement], field: str) -> bool:
        """Whether every sample has ``field``; a batch where only some have it fails (batch them apart)."""
        present = [hasattr(sample, field) for sample in data_samples]
        if any(present) and not all(present):
            raise ValueError(f'only some samples of the batch have {field!r}; batch such samples apart')
        return bool(present) and all(present)

    @staticmethod
    def _questions(data_samples: list[BaseDataElement], with_answers: bool) -> tuple[list[int], list, list]:
        """Questions per sample (a str or a list of them), flattened: counts (B,), questions, answers."""
        counts, questions, answers = [], [], []
        for sample in data_samples:
            qs = sample.question if isinstance(sample.question, list | tuple) else [sample.question]
            counts.append(len(qs))
            questions += [str(q) for q in qs]
            if with_answers:
                ans = sample.gt_answer if isinstance(sample.gt_answer, list | tuple) else [sample.gt_answer]
                if len(ans) != len(qs):
                    raise ValueError(f'a sample has {len(qs)} questions but {len(ans)} answers')
                answers += [str(a) for a in ans]
        return counts, questions, answers

    def loss(self, inputs: Tensor, data_samples: list[BaseDataElement]) -> dict[str, Tensor]:
        """Losses ``loss_contrastive`` and ``loss_caption`` plus logged scalars; with questions also
        ``loss_answer``. Samples carry ``text``, ``question`` (+ ``gt_answer``) or both (one encoder pass)."""
        with_text = self._has_field(data_samples, 'text')
        with_qa = self._has_field(data_samples, 'question')
        if not (with_text or with_qa):
            raise ValueError('training samples need a caption (text) or a question and gt_answer')
        contrastive_first = self.draw_pass_order() if with_text else True  # first: before any other RNG use
        img_tokens = self.visual_tokens(inputs)
        out: dict[str, Tensor] = {}
        if with_text:
            txt_ids, lengths = self._tokenize([sample.text for sample in data_samples], inputs.device)
            negatives = None
            if self._has_field(data_samples, 'negative_text'):
                negatives = self._tokenize([sample.negative_text for sample in data_samples], inputs.device)
            passes: list[Any] = [partial(self._contrastive_pass, negatives=negatives), self._generative_pass]
            if self.contrastive_only:
                passes = passes[:1]
            elif not contrastive_first:
                passes = passes[::-1]
            for run_pass in passes:
                out.update(run_pass(img_tokens, txt_ids, lengths))
            out['contrastive_first'] = torch.tensor(float(contrastive_first), device=inputs.device)
        if with_qa:
            out.update(self._answer_pass(img_tokens, data_samples))
        return out

    def _contrastive_pass(
        self,
        img_tokens: Tensor,
        txt_ids: Tensor,
        lengths: Tensor,
        negatives: tuple[Tensor, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Contrastive loss; ``negatives`` (ids, lengths) of one hard negative caption per image (NegCLIP)
        are extra image-to-text negatives, also counted by the logged ``acc_neg`` (caption beats its
        negative)."""
        img_emb = self.image_embedding(img_tokens)
        txt_emb = self.text_embedding(txt_ids, lengths)
        scale = self.current_logit_scale()
        neg_emb = self.text_embedding(*negatives) if negatives is not None else None
        if neg_emb is None:
            loss = self.contrastive_loss(img_emb, txt_emb, scale, self.logit_bias)
        else:
            loss = self.contrastive_loss(img_emb, txt_emb, scale, self.logit_bias, neg_txt_emb=neg_emb)
        with torch.no_grad():
            sim = img_emb.float() @ txt_emb.float().t()
            target = torch.arange(sim.shape[0], device=sim.device)
            out = {
                'loss_contrastive': loss,
                'logit_scale': scale.detach(),
                'acc_i2t': (sim.argmax(dim=1) == target).float().mean(),
                'acc_t2i': (sim.argmax(dim=0) == target).float().mean(),
            }
            if self.logit_bias is not None:
                out['logit_bias'] = self.logit_bias.detach()
            if neg_emb is not None:
                pos = (img_emb.float() * txt_emb.float()).sum(-1)
                out['acc_neg'] = (pos > (img_emb.float() * neg_emb.float()).sum(-1)).float().mean()
        return out

    def caption_targets(self, txt_ids: Tensor, lengths: Tensor) -> Tensor:
        """Next-token targets (B, L - 1): ``txt_ids[:, 1:]``, positions after EOS set to ``ignore_index``."""
        targets = txt_ids[:, 1:].clone()
        positions = torch.arange(targets.shape[1], device=txt_ids.device)[None]
        targets[positions >= (lengths[:, None] - 1)] = self.caption_loss.ignore_index
        return targets

    def _generative_pass(self, img_tokens: Tensor, txt_ids: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        logits = self.text_decoder.forward_generative(txt_ids[:, :-1], self.image_context(img_tokens))
        targets = self.caption_targets(txt_ids, lengths)
        loss = self.caption_loss(logits, targets)
        with torch.no_grad():
            valid = targets != self.caption_loss.ignore_index
            correct = (logits.argmax(dim=-1) == targets) & valid
            acc = correct.sum().float() / valid.sum().clamp(min=1).float()
        return {'loss_caption': loss, 'acc_caption': acc}

    def _answer_pass(self, img_tokens: Tensor, data_samples: list[BaseDataElement]) -> dict[str, Tensor]:
        """Generative pass on ``[bos] question answer [eos]``; the loss covers the answer and EOS only.

        A sample with several questions encodes its image or clip once; its tokens are repeated per question.
        """
        if self.caption_loss is None:
            raise RuntimeError('contrastive_only MaMMUT cannot answer questions')
        counts, questions, answers = self._questions(data_samples, with_answers=True)
        if not questions:  # clips listed with their questions, none of which has any
            zero = img_tokens.sum() * 0.0  # keeps every parameter in the graph (DDP)
            return {'loss_answer': zero, 'acc_answer': zero.detach()}
        repeats = torch.tensor(counts, device=img_tokens.device)
        txt_ids, prefix = self._qa_ids(questions, answers, img_tokens.device)
        lengths = self.tokenizer.lengths(txt_ids)
        logits = self.text_decoder.forward_generative(
            txt_ids[:, :-1], self.image_context(img_tokens), ctx_repeats=repeats
        )
        targets = self.caption_targets(txt_ids, lengths)
        positions = torch.arange(targets.shape[1], device=targets.device)[None]
        targets[positions < (prefix[:, None] - 1)] = self.caption_loss.ignore_index  # question tokens
        loss = self.caption_loss(logits, targets)
        with torch.no_grad():
            valid = targets != self.caption_loss.ignore_index
            correct = ((logits.argmax(dim=-1) == targets) | ~valid).all(dim=1).float().mean()
        return {'loss_answer': loss, 'acc_answer': correct}

    @torch.no_grad()
    def predict(self, inputs: Tensor, data_samples: list[BaseDataElement]) -> list[BaseDataElement]:
        """Sets ``img_emb`` (E,), ``txt_emb`` (K, E) of ``gt_captions`` and ``pred_caption`` (str), on CPU.

        Samples with a ``question`` get ``pred_answer`` (a str, or a list for a list of questions); samples
        with questions and no ``gt_captions`` skip the embeddings and captioning.
        """
        img_tokens = self.visual_tokens(inputs)
        if self._has_field(data_samples, 'question'):
            counts, questions, _ = self._questions(data_samples, with_answers=False)
            repeats = torch.tensor(counts, device=img_tokens.device)
            answers = (
                self._answer_from_tokens(img_tokens.repeat_interleave(repeats, dim=0), questions)
                if questions
                else []
            )
            start = 0
            for sample, count in zip(data_samples, counts, strict=True):
                grouped = isinstance(sample.question, list | tuple)
                sample.pred_answer = answers[start : start + count] if grouped else answers[start]
                start += count
            if not self._has_field(data_samples, 'gt_captions'):
                return data_samples
        img_emb = self.image_embedding(img_tokens).cpu()
        captions = [list(getattr(sample, 'gt_captions', None) or []) for sample in data_samples]
        flat = [text for texts in captions for text in texts]
        txt_emb = self.encode_text(flat).cpu() if flat else None
        method = (self.generation or {}).get('method', 'greedy')
        generate = self.generation is not None and method != 'none' and not self.contrastive_only
        preds = self._generate_from_tokens(img_tokens) if generate else None
        start = 0
        for index, sample in enumerate(data_samples):
            sample.img_emb = img_emb[index]
            if captions[index]:
                sample.txt_emb = txt_emb[start : start + len(captions[index])]
                start += len(captions[index])
            if preds is not None:
                sample.pred_caption = preds[index]
        return data_samples

    def _forward_tensor(
        self, inputs: Tensor, data_samples: list[BaseDataElement] | None
    ) -> dict[str, Tensor]:
        img_tokens = self.visual_tokens(inputs)
        out = {'img_tokens': img_tokens, 'img_emb': self.image_embedding(img_tokens)}
        if data_samples and all('text' in sample for sample in data_samples):
            out['txt_emb'] = self.encode_text([sample.text for sample in data_samples])
        return out
