"""BEiT-3: masked data modeling on a Multiway Transformer; dual-encoder retrieval after a contrastive tune.

Paper: Wang et al., "Image as a Foreign Language: BEiT Pretraining for All Vision and Vision-Language Tasks"
(BEiT-3), CVPR 2023. Sec. 2.1 (backbone: :class:`~pretrain.models.multiway.MultiwayTransformer`), Sec. 2.2
(one pretraining task, masked "language" modeling on images, texts and image-text pairs: 15 % of the tokens of
monomodal texts and 50 % of the text tokens of image-text pairs are masked, 40 % of the image patches with
BEiT's block-wise masking; the model predicts the text ids and the visual tokens of BEiT v2's tokenizer),
Sec. 3.2 and Fig. 3 (retrieval: the model as a dual encoder fine-tuned with an image-text contrastive loss).

MDM step (``mdm_loss``): the B image-caption pairs of a batch are split at random into three groups in
proportion to ``mixture`` (BEiT-3 draws each step from three corpora: 2048 images, 2048 texts, 2048 pairs;
Shapes World only has pairs, so the monomodal batches are made from the same data):

* image-only: the images, block-masked (:func:`block_wise_mask`, ``img_mask_ratio`` of the patches);
* text-only: the captions, ``txt_mask_prob`` of the tokens chosen (BERT 80/10/10 corruption, ``MLMLoss``);
* pairs: both, ``pair_txt_mask_prob`` of the text and ``img_mask_ratio`` of the patches.

Each group is one backbone pass (image, text and fused mode). A linear head predicts the text id of every
chosen text position (from the text-only and pair passes) and another the visual target of every masked patch
(image-only and pair passes); :class:`MDMLoss` turns them into the single ``loss_mdm``. The visual target is
a module (:mod:`pretrain.models.visual_tokenizer`): BEiT v2's VQ-KD ids (cross-entropy, like the text), or,
without a tokenizer checkpoint, per-patch normalised pixels regressed with MSE (not BEiT-3: documented
fallback). Logged: ``acc_mlm_txt`` (masked text ids), ``acc_mim`` (visual-token ids) or ``mse_mim``.

Contrastive step (``contrastive_loss``, e.g. ``InfoNCELoss``): image embedding = the cls token of the
image-only pass, text embedding = the first (BOS) token of the text-only pass, each through a bias-free
linear head and L2-normalised (BEiT-3's retrieval heads); learnable temperature (init 0.07, ``exp`` clamped at
100).
``predict`` sets ``img_emb`` (E,) and ``txt_emb`` (K, E) of the ``gt_captions`` for ``RetrievalMetric``; a
model without ``contrastive_loss`` returns the normalised unprojected features instead.

What differs from BEiT-3: the three MDM groups split one batch of pairs (see above); the masking ratios are
exact per group rather than per corpus; the prediction heads are single Linear layers on the final features;
random text replacements never draw special tokens; ``loss_mdm`` with pixel targets is the text
cross-entropy plus ``pixel_weight`` x the pixel MSE (two terms, one key); no momentum or queue in the
contrastive step (in-batch negatives gathered over processes). Block masks are drawn on the CPU with Python's
``random`` seeded from torch's RNG; blocks smaller than ``min_mask_patches`` are rejected (BEiT's rounding of
the block sides can produce slightly smaller ones) and a draw is retried up to 100 times instead of 10.

Data contract: ``inputs`` (B, 3, H, W) normalised by the data preprocessor; training samples carry ``text``;
evaluation samples carry ``gt_captions`` (list[str]) and ``img_id``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.structures import BaseDataElement
from torch import Tensor, nn

from toolkit.registry import MODELS, TOKENIZERS

from .base import VLBaseModel
from .fiber_losses import MLMLoss
from .image_text_model import ImageTextModel
from .losses import global_mean

__all__ = ['BEiT3', 'MDMLoss', 'block_wise_mask']

_KINDS = ('image', 'text', 'pair')


def block_wise_mask(
    grid: tuple[int, int],
    num_masking: int,
    *,
    min_num_patches: int,
    max_num_patches: int | None = None,
    min_aspect: float = 0.3,
    rng: random.Random,
    max_attempts: int = 100,
) -> tuple[Tensor, list[tuple[int, int, int, int]]]:
    """BEiT's block-wise masking (Bao et al., ICLR 2022, Sec. 2.5 / Algorithm 1).

    Rectangles of random area (``min_num_patches`` .. remaining budget) and aspect ratio (log-uniform in
    ``(min_aspect, 1 / min_aspect)``) are placed at random until ``num_masking`` patches are masked; a block
    is kept only if it has at least ``min_num_patches`` patches and adds between 1 and the remaining budget
    of new ones, so the count never overshoots. After ``max_attempts`` failed draws in a row the mask stays
    below the target: BEiT retries 10 times and accepts smaller blocks; keeping the minimum size needs more
    retries (100: mean coverage 0.397 for 78 of 14 x 14, 0.405 for 26 of 8 x 8).

    Returns ``mask`` (H, W) bool and the kept blocks ``(top, left, height, width)`` (they may overlap).
    """
    height, width = grid
    max_num_patches = num_masking if max_num_patches is None else max_num_patches
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    mask = [[False] * width for _ in range(height)]
    blocks: list[tuple[int, int, int, int]] = []
    count = 0
    while count < num_masking:
        budget = min(num_masking - count, max_num_patches)
        added = 0
        for _ in range(max_attempts):
            area = rng.uniform(min_num_patches, max(min_num_patches, budget))
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if h * w < min_num_patches or h > height or w > width:
                continue
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            new = sum(not mask[r][c] for r in range(top, top + h) for c in range(left, left + w))
            if 0 < new <= budget:
                for r in range(top, top + h):
                    for c in range(left, left + w):
                        mask[r][c] = True
                blocks.append((top, left, h, w))
                added = new
                break
        if not added:
            break
        count += added
    return torch.tensor(mask, dtype=torch.bool), blocks


@MODELS.register_module()
class MDMLoss(nn.Module):
    """BEiT-3's masked data modeling loss over masked text tokens and masked image patches, one scalar.

    Args:
        pixel_weight: weight of the pixel MSE when the visual target is a regression (the fallback).
        loss_weight: multiplier of the returned loss.

    ``forward(txt_logits (P_t, V), txt_labels (P_t,), img_pred (P_i, C), img_targets)``: with visual-token ids
    ``img_targets`` (P_i,) long, the cross-entropy averaged over all P_t + P_i predictions (text and image
    tokens alike); with pixel targets (P_i, C) float, the text cross-entropy + ``pixel_weight`` x MSE. Every
    average runs over the predictions of all processes (:func:`~pretrain.models.losses.global_mean`).
    """

    def __init__(self, *, pixel_weight: float = 1.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.pixel_weight = pixel_weight
        self.loss_weight = loss_weight

    def forward(
        self, txt_logits: Tensor, txt_labels: Tensor, img_pred: Tensor, img_targets: Tensor
    ) -> Tensor:
        zero = txt_logits.sum() * 0.0 + img_pred.sum() * 0.0  # keeps the graph when a part is empty
        txt_sum = (
            F.cross_entropy(txt_logits.float(), txt_labels, reduction='sum') if len(txt_labels) else zero
        )
        if img_targets.dtype == torch.long:
            img_sum = (
                F.cross_entropy(img_pred.float(), img_targets, reduction='sum') if len(img_targets) else zero
            )
            loss = global_mean(txt_sum + img_sum, len(txt_labels) + len(img_targets))
        else:
            sq_sum = zero
            if len(img_targets):
                sq_sum = F.mse_loss(img_pred.float(), img_targets.float(), reduction='sum')
            mse = global_mean(sq_sum, img_targets.numel())
            loss = global_mean(txt_sum, len(txt_labels)) + self.pixel_weight * mse
        return self.loss_weight * (loss + zero)


@MODELS.register_module()
class BEiT3(VLBaseModel, ImageTextModel):
    """BEiT-3 pretraining (MDM) and dual-encoder retrieval on a ``MultiwayTransformer``.

    Args:
        backbone: ``MultiwayTransformer`` config; ``vocab_size`` defaults to the tokenizer's (plus the
            appended mask id).
        tokenizer: config built from ``TOKENIZERS`` (or a built tokenizer); its ``context_length`` must fit
            the backbone's ``max_text_len``.
        mdm_loss: ``MDMLoss`` config; ``None`` = no masked data modeling.
        visual_target: ``VQKDTokenizer`` / ``PixelTarget`` config; needed by MDM with image or pair groups.
        contrastive_loss: e.g. ``InfoNCELoss``; ``None`` = no contrastive step (and no projection heads).
        embed_dim: E of the retrieval embeddings; ``None`` = the backbone width (BEiT-3's heads: D -> D).
        mixture: relative share of the batch per MDM group, ``dict(image=1, text=1, pair=1)`` by default.
        txt_mask_prob: fraction of monomodal text tokens chosen (BEiT-3: 0.15).
        pair_txt_mask_prob: fraction of the text tokens of pairs chosen (BEiT-3: 0.5).
        img_mask_ratio: fraction of image patches masked (BEiT-3: 0.4).
        min_mask_patches: smallest block; ``None`` = BEiT's 16 at 14 x 14 scaled to the grid (at least 2).
        mask_token_id: the text mask id; ``None`` appends one after the tokenizer's vocabulary.
        temperature_init: initial contrastive temperature (CLIP / BEiT-3 retrieval: 0.07).
        data_preprocessor: MMEngine data preprocessor config.
        init_cfg: MMEngine init config.
    """

    def __init__(
        self,
        *,
        backbone: dict,
        tokenizer: dict | Any,
        mdm_loss: dict | None = None,
        visual_target: dict | None = None,
        contrastive_loss: dict | None = None,
        embed_dim: int | None = None,
        mixture: dict | None = None,
        txt_mask_prob: float = 0.15,
        pair_txt_mask_prob: float = 0.5,
        img_mask_ratio: float = 0.4,
        min_mask_patches: int | None = None,
        mask_token_id: int | None = None,
        temperature_init: float = 0.07,
        data_preprocessor: dict | None = None,
        init_cfg: dict | list[dict] | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if mdm_loss is None and contrastive_loss is None:
            raise ValueError('BEiT3: configure mdm_loss, contrastive_loss or both')
        self.tokenizer = TOKENIZERS.build(tokenizer) if isinstance(tokenizer, dict) else tokenizer
        self.mask_token_id = int(self.tokenizer.vocab_size if mask_token_id is None else mask_token_id)
        backbone = dict(backbone)
        backbone.setdefault('vocab_size', self.tokenizer.vocab_size + (1 if mask_token_id is None else 0))
        self.backbone = MODELS.build(backbone)
        self.vocab_size = int(self.backbone.vocab_size)
        if self.mask_token_id >= self.vocab_size:
            raise ValueError(f'BEiT3: mask_token_id {self.mask_token_id} >= vocab_size {self.vocab_size}')
        if int(self.tokenizer.context_length) > self.backbone.max_text_len:
            raise ValueError(
                f'BEiT3: tokenizer context_length {self.tokenizer.context_length} > backbone max_text_len '
                f'{self.backbone.max_text_len}'
            )
        width = self.backbone.embed_dim
        self.mixture = {kind: float((mixture or {}).get(kind, 1.0)) for kind in _KINDS}
        if (
            set(mixture or {}) - set(_KINDS)
            or min(self.mixture.values()) < 0
            or not sum(self.mixture.values())
        ):
            raise ValueError(f'BEiT3: mixture must weigh {_KINDS} with non-negative weights, got {mixture}')
        self.img_mask_ratio = img_mask_ratio
        grid = self.backbone.grid
        self.min_mask_patches = (
            max(2, round(16 * grid * grid / 196)) if min_mask_patches is None else min_mask_patches
        )
        self.mdm_loss = MODELS.build(mdm_loss) if mdm_loss is not None else None
        self.visual_target = MODELS.build(visual_target) if visual_target is not None else None
        self.txt_head = self.img_head = None
        if self.mdm_loss is not None:
            uses_images = self.mixture['image'] > 0 or self.mixture['pair'] > 0
            if uses_images and self.visual_target is None:
                raise ValueError('BEiT3: MDM on images (image or pair groups) needs a visual_target')
            self.maskers = {
                'text': MLMLoss(mask_prob=txt_mask_prob),
                'pair': MLMLoss(mask_prob=pair_txt_mask_prob),
            }
            self.txt_head = nn.Linear(width, self.vocab_size)
            if self.visual_target is not None:
                self.img_head = nn.Linear(width, int(self.visual_target.num_outputs))
        self.contrastive_loss = MODELS.build(contrastive_loss) if contrastive_loss is not None else None
        self.img_proj = self.txt_proj = self.logit_scale = None
        if self.contrastive_loss is not None:
            embed_dim = embed_dim or width
            self.img_proj = nn.Linear(width, embed_dim, bias=False)
            self.txt_proj = nn.Linear(width, embed_dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature_init)))
        for head in (self.txt_head, self.img_head, self.img_proj, self.txt_proj):
            if head is not None:
                nn.init.trunc_normal_(head.weight, std=0.02)
                if head.bias is not None:
                    nn.init.zeros_(head.bias)

    # ------------------------------------------------------------------------------------------ pieces
    def _tokenize(self, texts: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """Texts -> ``txt_ids`` (B, L) and ``txt_mask`` (B, L) bool, L the longest text of the batch."""
        txt_ids, txt_mask = self.tokenizer.ids_and_mask(texts)
        return txt_ids.to(device), txt_mask.to(device)

    def block_masks(self, batch_size: int, device: torch.device) -> Tensor:
        """``batch_size`` block-wise masks (B, P) bool, ``img_mask_ratio`` of the patches each."""
        grid = self.backbone.grid
        rng = random.Random(int(torch.randint(0, 2**31 - 1, ()).item()))
        num = round(self.img_mask_ratio * grid * grid)
        masks = [
            block_wise_mask((grid, grid), num, min_num_patches=self.min_mask_patches, rng=rng)[0].flatten()
            for _ in range(batch_size)
        ]
        return torch.stack(masks).to(device)

    def _mask_text(self, txt_ids: Tensor, txt_mask: Tensor, kind: str) -> tuple[Tensor, Tensor]:
        return self.maskers[kind].mask_captions(
            txt_ids,
            txt_mask,
            mask_token_id=self.mask_token_id,
            vocab_size=self.vocab_size,
            tokenizer=self.tokenizer,
        )

    def split_batch(self, batch_size: int, device: torch.device) -> dict[str, Tensor]:
        """Random disjoint sample indices per MDM group, sizes in proportion to ``mixture``."""
        total = sum(self.mixture.values())
        shares = [batch_size * self.mixture[kind] / total for kind in _KINDS]
        sizes = [int(share) for share in shares]
        for index in sorted(range(3), key=lambda i: sizes[i] - shares[i])[: batch_size - sum(sizes)]:
            sizes[index] += 1  # largest remainders
        order = torch.randperm(batch_size, device=device)
        return dict(zip(_KINDS, torch.split(order, sizes), strict=True))

    def current_logit_scale(self) -> Tensor:
        """``exp(logit_scale)`` clamped at 100 (temperature >= 0.01); 1 without a contrastive step (no learned
        temperature: the cosine similarities themselves)."""
        if self.logit_scale is None:
            return torch.ones((), device=self.device)
        return self.logit_scale.exp().clamp(max=100.0)

    def image_embedding(self, images: Tensor) -> Tensor:
        """Dual encoder, image side: ``images`` (B, 3, H, W) -> ``img_emb`` (B, E), L2-normalised."""
        cls = self.backbone(images=images).hidden[:, 0]
        return F.normalize(self.img_proj(cls) if self.img_proj is not None else cls, dim=-1)

    def text_embedding(self, txt_ids: Tensor, txt_mask: Tensor) -> Tensor:
        """Dual encoder, text side: ``txt_ids`` (B, L) -> ``txt_emb`` (B, E), L2-normalised (first token)."""
        first = self.backbone(txt_ids=txt_ids, txt_mask=txt_mask).hidden[:, 0]
        return F.normalize(self.txt_proj(first) if self.txt_proj is not None else first, dim=-1)

    def encode_image(self, images: Tensor) -> Tensor:
        """``images`` (B, 3, H, W) -> ``img_emb`` (B, E), L2-normalised (:meth:`image_embedding`)."""
        return self.image_embedding(images)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """List of B texts -> ``txt_emb`` (B, E)."""
        return self.text_embedding(*self._tokenize(texts, self.device))

    # ------------------------------------------------------------------------------------------ modes
    def _forward_tensor(
        self, inputs: Tensor, data_samples: list[BaseDataElement] | None
    ) -> dict[str, Tensor]:
        out = self.backbone(images=inputs)
        return {'img_tokens': out.img_tokens, 'img_emb': self.image_embedding(inputs)}

    def loss(self, inputs: Tensor, data_samples: list[BaseDataElement]) -> dict[str, Tensor]:
        """``loss_mdm`` and/or ``loss_contrastive``, plus logged accuracies."""
        if not data_samples or not all('text' in sample for sample in data_samples):
            raise ValueError('BEiT3: every training sample needs a caption (text)')
        texts = [sample.text for sample in data_samples]
        out: dict[str, Tensor] = {}
        if self.mdm_loss is not None:
            out.update(self._mdm(inputs, texts))
        if self.contrastive_loss is not None:
            out.update(self._contrastive(inputs, texts))
        return out

    def _mdm(self, inputs: Tensor, texts: list[str]) -> dict[str, Tensor]:
        groups = self.split_batch(len(inputs), inputs.device)
        txt_logits, txt_labels, img_pred, img_targets = [], [], [], []
        for kind in _KINDS:
            rows = groups[kind]
            if not len(rows):
                continue
            images = txt_ids = txt_mask = img_masked = labels = None
            if kind in ('image', 'pair'):
                images = inputs[rows]
                img_masked = self.block_masks(len(rows), inputs.device)
            if kind in ('text', 'pair'):
                txt_ids, txt_mask = self._tokenize([texts[int(i)] for i in rows], inputs.device)
                txt_ids, labels = self._mask_text(txt_ids, txt_mask, kind)
            out = self.backbone(images=images, txt_ids=txt_ids, txt_mask=txt_mask, img_masked=img_masked)
            if images is not None:
                img_pred.append(self.img_head(out.img_tokens[:, 1:][img_masked]))
                img_targets.append(self.visual_target(images)[img_masked])
            if labels is not None:
                chosen = labels != self.maskers['text'].ignore_index
                txt_logits.append(self.txt_head(out.txt_tokens[chosen]))
                txt_labels.append(labels[chosen])
        width = self.backbone.embed_dim
        txt_logits_all = torch.cat(txt_logits) if txt_logits else inputs.new_zeros(0, self.vocab_size)
        txt_labels_all = torch.cat(txt_labels) if txt_labels else inputs.new_zeros(0, dtype=torch.long)
        if img_pred:
            img_pred_all, img_targets_all = torch.cat(img_pred), torch.cat(img_targets)
        else:  # no image group this step (or no visual target)
            outputs = self.img_head.out_features if self.img_head is not None else width
            img_pred_all = inputs.new_zeros(0, outputs)
            img_targets_all = inputs.new_zeros(0, dtype=torch.long)
        losses = {'loss_mdm': self.mdm_loss(txt_logits_all, txt_labels_all, img_pred_all, img_targets_all)}
        with torch.no_grad():
            if len(txt_labels_all):
                losses['acc_mlm_txt'] = (txt_logits_all.argmax(-1) == txt_labels_all).float().mean()
            if len(img_targets_all) and img_targets_all.dtype == torch.long:
                losses['acc_mim'] = (img_pred_all.argmax(-1) == img_targets_all).float().mean()
            elif len(img_targets_all):
                losses['mse_mim'] = F.mse_loss(img_pred_all.float(), img_targets_all.float())
        return losses

    def _contrastive(self, inputs: Tensor, texts: list[str]) -> dict[str, Tensor]:
        img_emb = self.image_embedding(inputs)
        txt_emb = self.text_embedding(*self._tokenize(texts, inputs.device))
        scale = self.current_logit_scale()
        loss = self.contrastive_loss(img_emb, txt_emb, scale)
        with torch.no_grad():
            logits_i2t = img_emb.float() @ txt_emb.float().t()
            target = torch.arange(len(logits_i2t), device=logits_i2t.device)
            return {
                'loss_contrastive': loss,
                'logit_scale': scale.detach(),
                'acc_i2t': (logits_i2t.argmax(dim=1) == target).float().mean(),
                'acc_t2i': (logits_i2t.argmax(dim=0) == target).float().mean(),
            }

    @torch.no_grad()
    def predict(self, inputs: Tensor, data_samples: list[BaseDataElement]) -> list[BaseDataElement]:
        """Sets ``img_emb`` (E,) and ``txt_emb`` (K, E) of the ``gt_captions`` (on CPU, L2-normalised)."""
        img_emb = self.image_embedding(inputs).cpu()
        captions = [list(getattr(sample, 'gt_captions', None) or []) for sample in data_samples]
        flat = [text for texts in captions for text in texts]
        txt_emb = self.encode_text(flat).cpu() if flat else None
        start = 0
        for index, sample in enumerate(data_samples):
            sample.img_emb = img_emb[index]
            if captions[index]:
                sample.txt_emb = txt_emb[start : start + len(captions[index])]
                start += len(captions[index])
        return data_samples
