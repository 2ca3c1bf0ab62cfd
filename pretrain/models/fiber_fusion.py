"""Gated cross-attention of FIBER's fusion in the backbone.

Paper: Dou et al., "Coarse-to-Fine Vision-Language Pre-training with Fusion in the Backbone" (FIBER),
NeurIPS 2022, Sec. 3.1: in the top layers of both uni-modal backbones, each side adds a cross-attention to the
other modality, scaled by a learnable scalar ``alpha`` that starts at 0, so that the pre-trained uni-modal
backbones are reproduced exactly at initialisation.

One :class:`GatedCrossAttention` serves both directions: queries come from ``dim``-wide tokens, keys and
values from ``context_dim``-wide tokens of the other modality (``kdim``/``vdim`` projections across the two
widths), attention runs in ``F.scaled_dot_product_attention`` with the context's padding masked, and the
module returns the gated update ``alpha * out_proj(attn)`` for the caller to add. ``query_norm`` adds a
LayerNorm on the query input, as FIBER's coarse-grained image side has (``norm_i2t_i``); its fine-grained
(detection) code has none.

What differs from FIBER: keys and values share one ``kv_proj`` (FIBER's image side fuses them the same way,
its text side has separate ``key``/``value`` layers; the converters concatenate those), and the image-side
cross-attention runs on the full token grid instead of per window (the same result: every query attends to
the whole text either way, and window partition and cyclic shift only permute the queries).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ['GatedCrossAttention', 'key_padding_mask']


def key_padding_mask(attention_mask: Tensor) -> Tensor:
    """``attention_mask`` (B, L), 1/True for real tokens -> SDPA boolean mask (B, 1, 1, L), True = attend.

    A row without any real token attends to all of them instead (SDPA would return NaN for it).
    """
    valid = attention_mask.bool()
    valid = valid | ~valid.any(dim=-1, keepdim=True)
    return valid[:, None, None, :]


class GatedCrossAttention(nn.Module):
    """Multi-head cross-attention whose output is scaled by a scalar gate ``alpha`` (initialised to 0).

    Args:
        dim: width of the query tokens (and of the output).
        context_dim: width of the key/value tokens (the other modality).
        num_heads: attention heads; must divide ``dim``.
        qkv_bias: biases on the query and key/value projections.
        query_norm: LayerNorm on the query input (FIBER's coarse-grained image side).
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
        norm_eps: epsilon of the query LayerNorm.

    Shapes:
        ``x`` (B, N, dim), ``context`` (B, M, context_dim), ``context_mask`` None or boolean broadcastable to
        (B, heads, N, M) with True = attend (see :func:`key_padding_mask`) -> (B, N, dim).
    """

    def __init__(
        self,
        *,
        dim: int,
        context_dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        query_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f'GatedCrossAttention: {num_heads} heads do not divide the width {dim}')
        self.dim = dim
        self.context_dim = context_dim
        self.num_heads = num_heads
        self.attn_drop = float(attn_drop)
        self.norm: nn.LayerNorm | None = nn.LayerNorm(dim, eps=norm_eps) if query_norm else None
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv_proj = nn.Linear(context_dim, 2 * dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.alpha = nn.Parameter(torch.zeros(1))  # shape (1,) as FIBER's alpha_i2t / alpha_t2i
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal (std 0.02) projections with zero biases, unit query norm, closed gate."""
        for linear in (self.q_proj, self.kv_proj, self.out_proj):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        if self.norm is not None:
            self.norm.reset_parameters()
        nn.init.zeros_(self.alpha)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        query_in = self.norm(x) if self.norm is not None else x
        q = rearrange(self.q_proj(query_in), 'b n (h d) -> b h n d', h=self.num_heads)
        k, v = rearrange(self.kv_proj(context), 'b m (two h d) -> two b h m d', two=2, h=self.num_heads)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=context_mask, dropout_p=self.attn_drop if self.training else 0.0
        )
        out = self.proj_drop(self.out_proj(rearrange(attn, 'b h n d -> b n (h d)')))
        return self.alpha * out

    def extra_repr(self) -> str:
        return f'dim={self.dim}, context_dim={self.context_dim}, num_heads={self.num_heads}'
