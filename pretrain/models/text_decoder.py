"""MaMMUT's single text decoder, run in two passes that share every weight.

Paper: Kuo et al., "MaMMUT: A Simple Architecture for Joint Learning for MultiModal Tasks", TMLR 2023, Sec. 3
("two-pass learning"). One decoder of N pre-norm layers; cross-attention to the image tokens sits in a subset
of the layers. The two passes:

* contrastive pass: bidirectional self-attention (padding masked), cross-attention skipped, final LayerNorm,
  mean pool over the real tokens, linear projection -> ``txt_emb`` (B, E);
* generative pass: causal self-attention, cross-attention to the image tokens, final LayerNorm, LM head
  (optionally tied to the token embedding) -> ``logits`` (B, L, V).

Cross-attention layers (``cross_attn_layers``): the paper reports that cross-attending in about half of the
decoder layers is enough and cheaper than in every layer. Our default ``'every_other'`` puts it in the odd
layers (1, 3, ...), so the top layer always cross-attends and image information enters at several depths;
``'upper_half'``, ``'all'`` or an explicit index list can be chosen instead.

What differs from the paper: the mean pool and the per-layer LayerNorm on the image tokens before the
cross-attention keys/values are our choices where the paper gives no detail. A :class:`DecoderCache` holds the
self-attention keys/values (growing per step) and the image keys/values (computed once) for incremental
decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from toolkit.registry import MODELS

from .vit import DropPath, Mlp

__all__ = ['CrossAttention', 'DecoderBlock', 'DecoderCache', 'MaMMUTTextDecoder', 'SelfAttention']


class DecoderCache:
    """Keys/values for incremental decoding; one entry per layer.

    ``self_kv[i]``: (k, v) each (B, H, T, Dh), grown by every call; ``cross_kv[i]``: (k, v) each (B, H, N, Dh)
    of the image tokens for cross-attention layers (``None`` elsewhere); ``length``: T, tokens seen so far.
    """

    def __init__(self, num_layers: int) -> None:
        self.self_kv: list[tuple[Tensor, Tensor] | None] = [None] * num_layers
        self.cross_kv: list[tuple[Tensor, Tensor] | None] = [None] * num_layers
        self.length = 0

    def reorder(self, index: Tensor) -> None:
        """Select rows (beams) of the self-attention cache by ``index`` (B',).

        The image keys/values are left alone: beam search only reorders beams of the same image, whose rows
        are identical.
        """
        self.self_kv = [None if kv is None else (kv[0][index], kv[1][index]) for kv in self.self_kv]


class SelfAttention(nn.Module):
    """Multi-head self-attention (fused qkv) with an optional key/value cache."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'width {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        past_kv: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x`` (B, T, D) -> (out (B, T, D), (k, v) including ``past_kv``)."""
        q, k, v = rearrange(self.qkv(x), 'b t (three h d) -> three b h t d', three=3, h=self.num_heads)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)
            v = torch.cat([past_kv[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj(rearrange(out, 'b h t d -> b t (h d)')), (k, v)


class CrossAttention(nn.Module):
    """Multi-head attention of text queries (B, T, D) to image keys/values (B, N, D)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def image_kv(self, img_ctx: Tensor) -> tuple[Tensor, Tensor]:
        """``img_ctx`` (B, N, D) -> (k, v) each (B, H, N, Dh)."""
        k, v = rearrange(self.kv(img_ctx), 'b n (two h d) -> two b h n d', two=2, h=self.num_heads)
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], attn_mask: Tensor | None = None) -> Tensor:
        q = rearrange(self.q(x), 'b t (h d) -> b h t d', h=self.num_heads)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=attn_mask)
        return self.proj(rearrange(out, 'b h t d -> b t (h d)'))


class DecoderBlock(nn.Module):
    """Pre-norm block: self-attention, [cross-attention to the image], MLP.

    With ``cross_attn_mlp`` a cross-attention layer is laid out as open_clip's ``MultimodalTransformer``:
    self-attention, [MLP if ``self_mlp``], then cross-attention followed by its own MLP (``cross_mlp``); the
    cross-attention and its MLP are skipped together when there is no image.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        has_cross: bool,
        drop_path: float,
        eps: float,
        cross_attn_mlp: bool = False,
        self_mlp: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = SelfAttention(dim, num_heads)
        self.has_cross = has_cross
        if has_cross:
            self.norm_cross = nn.LayerNorm(dim, eps=eps)
            self.norm_kv = nn.LayerNorm(dim, eps=eps)
            self.cross_attn = CrossAttention(dim, num_heads)
        self.cross_mlp: Mlp | None = None
        if has_cross and cross_attn_mlp:
            self.norm_cross_mlp = nn.LayerNorm(dim, eps=eps)
            self.cross_mlp = Mlp(dim, int(dim * mlp_ratio))
        self.mlp: Mlp | None = None
        if self_mlp or not has_cross:
            self.norm2 = nn.LayerNorm(dim, eps=eps)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def image_kv(self, img_ctx: Tensor) -> tuple[Tensor, Tensor]:
        return self.cross_attn.image_kv(self.norm_kv(img_ctx))

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        past_kv: tuple[Tensor, Tensor] | None = None,
        img_kv: tuple[Tensor, Tensor] | None = None,
        img_mask: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        attn_out, new_kv = self.self_attn(
            self.norm1(x), attn_mask=attn_mask, is_causal=is_causal, past_kv=past_kv
        )
        x = x + self.drop_path(attn_out)
        if self.cross_mlp is not None:  # open_clip layout: self-attention [+ MLP], then cross-attention + MLP
            if self.mlp is not None:
                x = x + self.drop_path(self.mlp(self.norm2(x)))
            if img_kv is not None:
                x = x + self.drop_path(self.cross_attn(self.norm_cross(x), img_kv, img_mask))
                x = x + self.drop_path(self.cross_mlp(self.norm_cross_mlp(x)))
            return x, new_kv
        if self.has_cross and img_kv is not None:
            x = x + self.drop_path(self.cross_attn(self.norm_cross(x), img_kv, img_mask))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, new_kv


def _resolve_cross_layers(spec: str | Sequence[int], depth: int) -> tuple[int, ...]:
    if isinstance(spec, str):
        if spec == 'every_other':
            return tuple(range(1, depth, 2)) if depth > 1 else (0,)
        if spec == 'upper_half':
            return tuple(range(depth // 2, depth))
        if spec == 'all':
            return tuple(range(depth))
        if spec == 'none':
            return ()
        raise ValueError(
            f"cross_attn_layers must be 'every_other', 'upper_half', 'all', 'none' or a list, got {spec!r}"
        )
    if any(not -depth <= int(i) < depth for i in spec):
        raise ValueError(f'cross_attn_layers {list(spec)} out of range for depth {depth}')
    return tuple(sorted({int(i) % depth for i in spec}))


@MODELS.register_module()
class MaMMUTTextDecoder(BaseModule):
    """One text decoder for MaMMUT's contrastive and generative passes.

    Args:
        vocab_size: V; MaMMUT fills it from its tokenizer.
        context_length: L_max, number of learned positions.
        width: W, token width.
        depth: number of layers.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / W.
        cross_attn_layers: ``'every_other'`` (default, odd layers), ``'upper_half'``, ``'all'``, ``'none'`` or
            layer indices.
        embed_dim: E, size of ``txt_emb``; ``None`` keeps W (no projection).
        contrastive_pool: ``'mean'`` (padding keys masked, mean over the real tokens) or ``'mean_all'``
            (openMaMMUT: no padding mask, mean over every position of the given ids, padding included; the
            caller pads to the context length).
        cross_attn_mlp: each cross-attention carries its own MLP, both skipped without an image (open_clip's
            ``MultimodalTransformer``, openMaMMUT); off: one MLP per layer after the cross-attention.
        cross_layer_self_mlp: with ``cross_attn_mlp``, layers with cross-attention keep the MLP after the
            self-attention too (openMaMMUT ``has_mlp``: true for ViT-L-14, false for ViT-B-32).
        tie_embeddings: the LM head reuses the token embedding matrix.
        drop_path_rate: stochastic depth rate, linearly increasing over the layers.
        layer_norm_eps: LayerNorm epsilon.
        grad_checkpointing: recompute layers in the backward pass while training.
        init_cfg: MMEngine init config.

    Shapes: ``txt_ids`` (B, L) long; ``lengths`` (B,) real tokens incl. BOS/EOS; ``img_ctx`` (B, N, W) image
    tokens already at the decoder width; ``txt_emb`` (B, E); ``logits`` (B, L, V).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        context_length: int = 77,
        width: int = 512,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        cross_attn_layers: str | Sequence[int] = 'every_other',
        embed_dim: int | None = None,
        contrastive_pool: str = 'mean',
        cross_attn_mlp: bool = False,
        cross_layer_self_mlp: bool = True,
        tie_embeddings: bool = True,
        drop_path_rate: float = 0.0,
        layer_norm_eps: float = 1e-5,
        grad_checkpointing: bool = False,
        init_cfg: dict | list[dict] | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if contrastive_pool not in ('mean', 'mean_all'):
            raise ValueError(f"contrastive_pool must be 'mean' or 'mean_all', got {contrastive_pool!r}")
        if not cross_layer_self_mlp and not cross_attn_mlp:
            raise ValueError('cross_layer_self_mlp=False needs cross_attn_mlp=True (the MLP moves there)')
        self.contrastive_pool = contrastive_pool
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.width = width
        self.depth = depth
        self.cross_layers = _resolve_cross_layers(cross_attn_layers, depth)
        self.grad_checkpointing = grad_checkpointing
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, context_length, width))
        rates = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist() if depth > 0 else []
        self.blocks = nn.ModuleList(
            DecoderBlock(
                width,
                num_heads,
                mlp_ratio,
                i in self.cross_layers,
                rate,
                layer_norm_eps,
                cross_attn_mlp=cross_attn_mlp,
                self_mlp=cross_layer_self_mlp,
            )
            for i, rate in enumerate(rates)
        )
        self.norm_final = nn.LayerNorm(width, eps=layer_norm_eps)
        self.embed_dim = embed_dim or width
        self.text_proj = nn.Linear(width, embed_dim, bias=False) if embed_dim else nn.Identity()
        self.tie_embeddings = tie_embeddings
        self.lm_head = None if tie_embeddings else nn.Linear(width, vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def cross_attention_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters only the generative pass uses (cross-attention and an untied LM head)."""
        names = []
        for name, param in self.named_parameters():
            if (
                '.cross_attn.' in name
                or '.cross_mlp.' in name
                or '.norm_cross' in name
                or '.norm_kv.' in name
                or name.startswith('lm_head.')
            ):
                names.append((name, param))
        return names

    # ------------------------------------------------------------------ internals
    def _embed(self, txt_ids: Tensor, offset: int = 0) -> Tensor:
        length = txt_ids.shape[1]
        if offset + length > self.context_length:
            raise ValueError(f'text of {offset + length} tokens exceeds context_length {self.context_length}')
        return self.token_embed(txt_ids) + self.pos_embed[:, offset : offset + length]

    def _logits(self, hidden: Tensor) -> Tensor:
        if self.lm_head is not None:
            return self.lm_head(hidden)
        return hidden @ self.token_embed.weight.t()

    def _run_blocks(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | None,
        is_causal: bool,
        img_ctx: Tensor | None,
        img_mask: Tensor | None,
        ctx_repeats: Tensor | None = None,
    ) -> Tensor:
        for block in self.blocks:
            img_kv = block.image_kv(img_ctx) if block.has_cross and img_ctx is not None else None
            if img_kv is not None and ctx_repeats is not None:  # project each image once, then share
                img_kv = (
                    img_kv[0].repeat_interleave(ctx_repeats, 0),
                    img_kv[1].repeat_interleave(ctx_repeats, 0),
                )

            def run(x_in: Tensor, block: DecoderBlock = block, img_kv: tuple | None = img_kv) -> Tensor:
                return block(
                    x_in, attn_mask=attn_mask, is_causal=is_causal, img_kv=img_kv, img_mask=img_mask
                )[0]

            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(run, x, use_reentrant=False)
            else:
                x = run(x)
        return x

    @staticmethod
    def _img_mask(img_mask: Tensor | None) -> Tensor | None:
        """(B, N) image-token mask -> (B, 1, 1, N) for SDPA.

        Boolean or integer masks mean validity (True / 1 = attend); floating masks are additive (0 / -inf).
        """
        if img_mask is None:
            return None
        mask = img_mask[:, None, None, :]
        return mask if mask.is_floating_point() else mask.bool()

    # ------------------------------------------------------------------ passes
    def encode_tokens(
        self,
        txt_ids: Tensor,
        *,
        causal: bool,
        lengths: Tensor | None = None,
        img_ctx: Tensor | None = None,
        img_mask: Tensor | None = None,
        ctx_repeats: Tensor | None = None,
    ) -> Tensor:
        """Final-normed token features (B, L, W).

        ``causal=False`` with ``lengths`` masks padding keys; ``img_ctx=None`` skips every cross-attention.
        ``ctx_repeats`` (B_img,): text row blocks share one image each (``img_ctx`` (B_img, N, W), B =
        ``ctx_repeats.sum()``): the image keys/values are computed once per image, e.g. for the questions
        of one clip.
        """
        x = self._embed(txt_ids)
        attn_mask = None
        if not causal and lengths is not None:
            valid = torch.arange(txt_ids.shape[1], device=txt_ids.device)[None] < lengths[:, None]
            attn_mask = valid[:, None, None, :]  # (B, 1, 1, L): keys only
        if img_mask is not None and ctx_repeats is not None:
            img_mask = img_mask.repeat_interleave(ctx_repeats, 0)
        x = self._run_blocks(
            x,
            attn_mask=attn_mask,
            is_causal=causal,
            img_ctx=img_ctx,
            img_mask=self._img_mask(img_mask),
            ctx_repeats=ctx_repeats,
        )
        return self.norm_final(x)

    def forward_contrastive(self, txt_ids: Tensor, lengths: Tensor) -> Tensor:
        """Contrastive pass: bidirectional, no image -> ``txt_emb`` (B, E), not normalised.

        With ``contrastive_pool='mean_all'`` ``lengths`` is not used: every position attends and is pooled.
        """
        if self.contrastive_pool == 'mean_all':
            return self.text_proj(self.encode_tokens(txt_ids, causal=False).mean(dim=1))
        tokens = self.encode_tokens(txt_ids, causal=False, lengths=lengths)
        valid = (torch.arange(txt_ids.shape[1], device=txt_ids.device)[None] < lengths[:, None]).to(
            tokens.dtype
        )
        pooled = (tokens * valid[..., None]).sum(dim=1) / valid.sum(dim=1, keepdim=True).clamp(min=1.0)
        return self.text_proj(pooled)

    def forward_generative(
        self,
        txt_ids: Tensor,
        img_ctx: Tensor,
        img_mask: Tensor | None = None,
        ctx_repeats: Tensor | None = None,
    ) -> Tensor:
        """Generative pass: causal, cross-attending to ``img_ctx`` (B, N, W) -> ``logits`` (B, L, V).

        With ``ctx_repeats`` (B_img,), ``img_ctx`` is (B_img, N, W) and row block i of ``txt_ids`` reads
        image i (see :meth:`encode_tokens`).
        """
        tokens = self.encode_tokens(
            txt_ids, causal=True, img_ctx=img_ctx, img_mask=img_mask, ctx_repeats=ctx_repeats
        )
        return self._logits(tokens)

    def forward(
        self,
        txt_ids: Tensor,
        *,
        lengths: Tensor | None = None,
        img_ctx: Tensor | None = None,
        img_mask: Tensor | None = None,
    ) -> Tensor:
        """Generative pass when ``img_ctx`` is given, else the contrastive pass (needs ``lengths``)."""
        if img_ctx is not None:
            return self.forward_generative(txt_ids, img_ctx, img_mask)
        if lengths is None:
            raise ValueError('the contrastive pass needs lengths (B,)')
        return self.forward_contrastive(txt_ids, lengths)

    # ------------------------------------------------------------------ incremental decoding
    def init_cache(self, img_ctx: Tensor) -> DecoderCache:
        """An empty cache holding the image keys/values of every cross-attention layer."""
        cache = DecoderCache(self.depth)
        for index, block in enumerate(self.blocks):
            if block.has_cross:
                cache.cross_kv[index] = block.image_kv(img_ctx)
        return cache

    def step(self, txt_ids: Tensor, cache: DecoderCache, img_mask: Tensor | None = None) -> Tensor:
        """Feed ``txt_ids`` (B, T_new), the tokens after ``cache.length``; returns ``logits`` (B, T_new, V).

        Updates ``cache`` in place. With T_new > 1 the new tokens attend causally among themselves.
        """
        new_len = txt_ids.shape[1]
        past = cache.length
        x = self._embed(txt_ids, offset=past)
        attn_mask = None
        if new_len > 1:
            query_pos = torch.arange(past, past + new_len, device=txt_ids.device)
            key_pos = torch.arange(past + new_len, device=txt_ids.device)
            attn_mask = key_pos[None, :] <= query_pos[:, None]  # (T_new, T_total), True = attend
        mask = self._img_mask(img_mask)
        for index, block in enumerate(self.blocks):
            x, cache.self_kv[index] = block(
                x,
                attn_mask=attn_mask,
                past_kv=cache.self_kv[index],
                img_kv=cache.cross_kv[index],
                img_mask=mask,
            )
        cache.length = past + new_len
        return self._logits(self.norm_final(x))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
