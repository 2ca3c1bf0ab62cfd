"""Multiway Transformer: the BEiT-3 backbone (one network as image, text, dual or fusion encoder).

Paper: Wang et al., "Image as a Foreign Language: BEiT Pretraining for All Vision and Vision-Language Tasks"
(BEiT-3), CVPR 2023, Sec. 2.1 (Multiway Transformers, Fig. 2) and Fig. 3 (how the same model serves as image
encoder, text encoder, dual encoder or fusion encoder). Reference code: torchscale 0.3.0
(``architecture/encoder.py``, ``component/{multihead_attention,multiway_network,feedforward_network,
embedding}.py``, ``model/BEiT3.py``), the library behind the released BEiT-3 checkpoints.

Every layer has self-attention over all tokens, then a pool of feed-forward experts: a vision expert for image
tokens and a language expert for text tokens. The top ``num_vl_layers`` layers (BEiT-3: 3) also have a
vision-language expert; on fused image-text input every token of those layers goes through it (as VLMo), on
image-only or text-only input those layers still use the modality experts. The sequence is laid out
``[image tokens | text tokens]``; the number of image tokens (``split``) routes each token:

* image-only (``split == N``): every token to the vision expert;
* text-only (``split == 0``): every token to the language expert;
* fused (``0 < split < N``): image tokens to the vision, text tokens to the language expert, except in the
  top layers, where all go to the vision-language expert.

LayerNorms are per modality (vision / language, plus a vision-language one in front of the VL expert).
``attention='shared'`` has one set of q/k/v/out projections (the paper's "shared self-attention");
``attention='multiway'`` has per-modality projections (torchscale's ``MultiwayWrapper`` around them, the
layout of the released checkpoints). Attention is always joint over all tokens (SDPA, text padding masked).

Mirrored from torchscale so that :func:`convert_torchscale_beit3` gives the same outputs: pre-LN layers with
sub-LN (Magneto, Wang et al. 2022: a LayerNorm inside attention before ``out_proj`` and inside the FFN between
GELU and ``fc2``); learned positional embeddings per modality that start at index 2 (fairseq); a vision
embedding with a cls token and a mask token (masked patches are replaced before the cls token is prepended);
padded text embeddings zeroed; a per-modality final LayerNorm; no embedding scale or embedding LayerNorm.

What differs from torchscale: the vision-language experts (torchscale has none); ``attention='shared'``;
SDPA instead of an explicit softmax; no fairscale checkpoint/FSDP wrappers, MoE, relative position bias or
xPos; initialisation is BEiT's (truncated normal 0.02, zero biases) followed by torchscale's sub-LN scaling
(``fc1``, ``fc2``, ``out_proj`` and ``v_proj`` weights times ``sqrt(log(2 * depth))``) instead of PyTorch's
default Linear init; the unused ``output_projection`` of torchscale's encoder is not kept.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from toolkit.registry import MODELS

from .vit import DropPath

__all__ = [
    'FeedForward',
    'Multiway',
    'MultiwayAttention',
    'MultiwayLayer',
    'MultiwayOutput',
    'MultiwayTransformer',
    'convert_torchscale_beit3',
    'torchscale_beit3_name',
]

_ATTENTION = ('shared', 'multiway')


class Multiway(nn.Module):
    """Per-modality copies of a module, routed along the token axis.

    ``forward(x (B, N, C), split, use_vl=False)``: with ``use_vl`` every token goes to ``vl``; otherwise the
    first ``split`` tokens go to ``vision`` and the rest to ``language`` (a modality with no tokens is not
    called). Returns (B, N, C_out).
    """

    def __init__(self, make: Callable[[], nn.Module], *, vl: bool = False) -> None:
        super().__init__()
        self.vision = make()
        self.language = make()
        self.vl = make() if vl else None

    def forward(self, x: Tensor, split: int, use_vl: bool = False) -> Tensor:
        if use_vl:
            if self.vl is None:
                raise RuntimeError('Multiway: use_vl=True on a module without a vision-language copy')
            return self.vl(x)
        if split >= x.shape[1]:
            return self.vision(x)
        if split <= 0:
            return self.language(x)
        return torch.cat([self.vision(x[:, :split]), self.language(x[:, split:])], dim=1)


def _route(module: nn.Module, x: Tensor, split: int) -> Tensor:
    return module(x, split) if isinstance(module, Multiway) else module(x)


class MultiwayAttention(nn.Module):
    """Joint multi-head self-attention with sub-LN; projections shared or per modality.

    ``forward(x (B, N, D), split, attn_mask (B, 1, 1, N) bool or None)`` -> (B, N, D). ``attn_mask`` is True
    at the keys that may be attended (text padding False).
    """

    def __init__(self, *, dim: int, num_heads: int, multiway: bool, eps: float, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'MultiwayAttention: width {dim} is not divisible by {num_heads} heads')
        self.num_heads = num_heads
        self.dropout = dropout

        def linear() -> nn.Module:
            return nn.Linear(dim, dim)

        make = (lambda: Multiway(linear)) if multiway else linear
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = make(), make(), make(), make()
        self.inner_norm = Multiway(lambda: nn.LayerNorm(dim, eps=eps))

    def forward(self, x: Tensor, split: int, attn_mask: Tensor | None) -> Tensor:
        heads = self.num_heads
        q, k, v = (
            rearrange(_route(proj, x, split), 'b n (h d) -> b h n d', h=heads)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        out = self.inner_norm(rearrange(out, 'b h n d -> b n (h d)'), split)
        return _route(self.out_proj, out, split)


class FeedForward(nn.Module):
    """One expert: ``fc1`` -> GELU -> sub-LN -> ``fc2`` (torchscale's FeedForwardNetwork with ``subln``).

    ``forward(x (..., D))`` -> (..., D).
    """

    def __init__(self, *, dim: int, hidden_dim: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim, eps=eps)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        hidden = F.gelu(self.fc1(x).float()).type_as(x)
        return self.dropout(self.fc2(self.norm(hidden)))


class MultiwayLayer(nn.Module):
    """Pre-LN Multiway layer: ``x + attn(LN(x))``, then ``x + expert(LN(x))``.

    ``forward(x (B, N, D), split, attn_mask, fused)`` -> (B, N, D); with ``fused`` and a vision-language
    expert (``has_vl``) every token goes through the vision-language LayerNorm and expert.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        attention: str,
        has_vl: bool,
        eps: float,
        dropout: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm_attn = Multiway(lambda: nn.LayerNorm(dim, eps=eps))
        self.attn = MultiwayAttention(
            dim=dim, num_heads=num_heads, multiway=attention == 'multiway', eps=eps, dropout=dropout
        )
        self.norm_ffn = Multiway(lambda: nn.LayerNorm(dim, eps=eps), vl=has_vl)
        self.ffn = Multiway(
            lambda: FeedForward(dim=dim, hidden_dim=ffn_dim, eps=eps, dropout=dropout), vl=has_vl
        )
        self.dropout = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    @property
    def has_vl(self) -> bool:
        return self.ffn.vl is not None

    def forward(self, x: Tensor, split: int, attn_mask: Tensor | None, fused: bool) -> Tensor:
        x = x + self.drop_path(self.dropout(self.attn(self.norm_attn(x, split), split, attn_mask)))
        use_vl = fused and self.has_vl
        return x + self.drop_path(self.ffn(self.norm_ffn(x, split, use_vl), split, use_vl))


class MultiwayOutput(NamedTuple):
    """``hidden`` (B, N, D) after the final LayerNorm, laid out ``[image tokens | text tokens]``;
    ``num_img_tokens`` = 1 + patches (cls first) when an image was given, else 0."""

    hidden: Tensor
    num_img_tokens: int

    @property
    def img_tokens(self) -> Tensor:
        """(B, 1 + P, D), the cls token first."""
        return self.hidden[:, : self.num_img_tokens]

    @property
    def txt_tokens(self) -> Tensor:
        """(B, L, D)."""
        return self.hidden[:, self.num_img_tokens :]


@MODELS.register_module()
class MultiwayTransformer(BaseModule):
    """BEiT-3's Multiway Transformer (Sec. 2.1).

    Args:
        vocab_size: text vocabulary V (BEiT-3: 64,010, SentencePiece).
        img_size: square input side (BEiT-3 pretraining: 224).
        patch_size: patch side (BEiT-3 base: 16).
        in_chans: image channels.
        embed_dim: width D.
        depth: number of layers.
        num_heads: attention heads.
        ffn_dim: hidden width of every FFN expert.
        num_vl_layers: how many top layers have a vision-language expert (BEiT-3: 3; 0 = torchscale).
        max_text_len: longest text (BOS..EOS); the text position table has ``max_text_len + 2`` rows because
            positions start at 2 (fairseq).
        attention: ``'shared'`` (paper) or ``'multiway'`` (per-modality projections, torchscale's layout).
        layer_norm_eps: eps of every LayerNorm (torchscale: 1e-5).
        dropout: dropout on attention probabilities, residual branches and embeddings.
        drop_path_rate: stochastic depth, linearly increasing to this value over the layers.
        grad_checkpointing: recompute each layer in the backward pass while training with gradients (one
            (B, N, D) input kept per layer instead of its attention and expert activations).
        init_cfg: MMEngine init config (e.g. a ``Pretrained`` converted checkpoint).

    ``forward(images=None (B, 3, H, W), txt_ids=None (B, L), txt_mask=None (B, L) bool True at real tokens,
    img_masked=None (B, P) bool True at patches replaced by the mask token)`` -> :class:`MultiwayOutput`.
    Image-only, text-only or fused mode follows from which inputs are given.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        ffn_dim: int = 3072,
        num_vl_layers: int = 3,
        max_text_len: int = 1022,
        attention: str = 'shared',
        layer_norm_eps: float = 1e-5,
        dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
        init_cfg: dict | list[dict] | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if attention not in _ATTENTION:
            raise ValueError(f'MultiwayTransformer: attention must be one of {_ATTENTION}, got {attention!r}')
        if not 0 <= num_vl_layers <= depth:
            raise ValueError(f'MultiwayTransformer: num_vl_layers={num_vl_layers} outside [0, {depth}]')
        if img_size % patch_size:
            raise ValueError(f'MultiwayTransformer: img_size {img_size} is not a multiple of {patch_size}')
        self.vocab_size = vocab_size
        self.img_size, self.patch_size = img_size, patch_size
        self.grid = img_size // patch_size
        self.num_patches = self.grid**2
        self.embed_dim, self.depth, self.max_text_len = embed_dim, depth, max_text_len
        self.attention = attention
        self.grad_checkpointing = grad_checkpointing

        self.text_embed = nn.Embedding(vocab_size, embed_dim)
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed_vision = nn.Embedding(self.num_patches + 1 + 2, embed_dim)  # cls + patches, from 2
        self.pos_embed_text = nn.Embedding(max_text_len + 2, embed_dim)
        self.embed_dropout = nn.Dropout(dropout)
        rates = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()  # also under a meta device
        self.layers = nn.ModuleList(
            MultiwayLayer(
                dim=embed_dim,
                num_heads=num_heads,
                ffn_dim=ffn_dim,
                attention=attention,
                has_vl=index >= depth - num_vl_layers,
                eps=layer_norm_eps,
                dropout=dropout,
                drop_path=rates[index],
            )
            for index in range(depth)
        )
        self.norm = Multiway(lambda: nn.LayerNorm(embed_dim, eps=layer_norm_eps))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        scale = math.sqrt(math.log(2 * self.depth))  # torchscale's sub-LN init scaling (encoder only)
        for name, param in self.named_parameters():
            if re.search(r'\.(fc1|fc2|out_proj|v_proj)\b', name) and name.endswith('weight'):
                param.data.mul_(scale)

    # ------------------------------------------------------------------------------------------ embeddings
    def embed_image(self, images: Tensor, img_masked: Tensor | None = None) -> Tensor:
        """``images`` (B, 3, H, W) -> (B, 1 + P, D): patches (masked ones replaced), cls first, positions."""
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f'MultiwayTransformer: expected {self.img_size} px images, got {images.shape}')
        patches = rearrange(self.patch_embed(images), 'b d h w -> b (h w) d')
        if img_masked is not None:
            weight = img_masked.unsqueeze(-1).to(patches.dtype)
            patches = patches * (1 - weight) + self.mask_token.to(patches.dtype) * weight
        tokens = torch.cat([self.cls_token.expand(len(patches), -1, -1).to(patches.dtype), patches], dim=1)
        return tokens + self.pos_embed_vision.weight[2 : 2 + tokens.shape[1]]

    def embed_text(self, txt_ids: Tensor) -> Tensor:
        """``txt_ids`` (B, L) -> (B, L, D) with positions."""
        if txt_ids.shape[1] > self.max_text_len:
            raise ValueError(f'MultiwayTransformer: text of {txt_ids.shape[1]} > {self.max_text_len} tokens')
        return self.text_embed(txt_ids) + self.pos_embed_text.weight[2 : 2 + txt_ids.shape[1]]

    def forward(
        self,
        images: Tensor | None = None,
        txt_ids: Tensor | None = None,
        txt_mask: Tensor | None = None,
        img_masked: Tensor | None = None,
    ) -> MultiwayOutput:
        if images is None and txt_ids is None:
            raise ValueError('MultiwayTransformer: give images, txt_ids or both')
        parts, keep = [], []
        if images is not None:
            img_tokens = self.embed_image(images, img_masked)
            parts.append(img_tokens)
            keep.append(torch.ones(img_tokens.shape[:2], dtype=torch.bool, device=img_tokens.device))
        if txt_ids is not None:
            parts.append(self.embed_text(txt_ids))
            keep.append(torch.ones_like(txt_ids, dtype=torch.bool) if txt_mask is None else txt_mask.bool())
        split = parts[0].shape[1] if images is not None else 0
        x = torch.cat(parts, dim=1)
        valid = torch.cat(keep, dim=1)  # (B, N) True at real tokens
        attn_mask = None
        if not bool(valid.all()):
            x = x * valid.unsqueeze(-1).to(x.dtype)  # torchscale zeroes padded embeddings
            attn_mask = valid[:, None, None, :]
        x = self.embed_dropout(x)
        fused = images is not None and txt_ids is not None
        for layer in self.layers:
            # Non-reentrant checkpointing restores the RNG state: dropout and drop-path redraw the same masks.
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, split, attn_mask, fused, use_reentrant=False)
            else:
                x = layer(x, split, attn_mask, fused)
        return MultiwayOutput(self.norm(x, split), split)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


# ---------------------------------------------------------------------------------------------- converters
_TS_RENAMES = (  # torchscale names (after A/B -> vision/language) -> ours
    (r'^vision_embed\.proj\.', 'patch_embed.'),
    (r'^vision_embed\.(cls_token|mask_token)$', r'\1'),
    (r'^text_embed\.weight$', 'text_embed.weight'),
    (r'^encoder\.embed_positions\.vision\.weight$', 'pos_embed_vision.weight'),
    (r'^encoder\.embed_positions\.language\.weight$', 'pos_embed_text.weight'),
    (r'^encoder\.layer_norm\.', 'norm.'),
    (r'^encoder\.layers\.(\d+)\.self_attn\.inner_attn_ln\.', r'layers.\1.attn.inner_norm.'),
    (r'^encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.', r'layers.\1.attn.\2_proj.'),
    (r'^encoder\.layers\.(\d+)\.self_attn_layer_norm\.', r'layers.\1.norm_attn.'),
    (r'^encoder\.layers\.(\d+)\.final_layer_norm\.', r'layers.\1.norm_ffn.'),
    (r'^encoder\.layers\.(\d+)\.ffn\.(vision|language)\.ffn_layernorm\.', r'layers.\1.ffn.\2.norm.'),
    (r'^encoder\.layers\.(\d+)\.ffn\.(vision|language)\.(fc1|fc2)\.', r'layers.\1.ffn.\2.\3.'),
)


def convert_torchscale_beit3(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchscale ``BEiT3`` (or a unilm BEiT-3 checkpoint with a ``beit3.`` prefix) -> our
    :class:`MultiwayTransformer` with ``attention='multiway'`` and ``num_vl_layers=0``.

    torchscale's ``MultiwayNetwork`` copies ``A`` / ``B`` become ``vision`` / ``language``. The encoder's
    ``output_projection`` (an LM output layer BEiT-3 does not use) is dropped. Any other unknown key raises
    a ValueError naming it.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = torchscale_beit3_name(key)
        if name is None:
            raise ValueError(f'convert_torchscale_beit3: unexpected key {key!r}')
        if name:
            out[name] = value
    return out


def torchscale_beit3_name(key: str) -> str | None:
    """Our :class:`MultiwayTransformer` name of one torchscale ``BEiT3`` key (``beit3.`` prefix allowed).

    ``''`` for a key dropped on purpose (``encoder.output_projection``), ``None`` for an unknown one.
    """
    name = key.removeprefix('beit3.')
    if name.startswith('encoder.output_projection.'):
        return ''
    name = re.sub(r'\.A(\.|$)', r'.vision\1', re.sub(r'\.B(\.|$)', r'.language\1', name))
    for pattern, replacement in _TS_RENAMES:
        new, count = re.subn(pattern, replacement, name)
        if count:
            return new
    return None
