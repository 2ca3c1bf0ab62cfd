"""A BERT encoder whose top layers cross-attend to image tokens: ALBEF's text and fusion encoders, one stack.

Papers: Devlin et al., "BERT", NAACL 2019 (post-LayerNorm layers, learned absolute positions, token types);
Li et al., "Align before Fuse" (ALBEF), NeurIPS 2021, Sec. 3.1: the first ``num_text_layers`` layers
(6 of BERT-base's 12) are the unimodal text encoder, the remaining ones the multimodal fusion encoder, each
with a cross-attention block to the image tokens between its self-attention and feed-forward blocks.

Layer math (BERT, post-norm): ``h = LN(x + SelfAttn(x))``; in fusion layers ``h = LN(h + CrossAttn(h, img))``;
``out = LN(h + FFN(h))`` with ``FFN = Linear -> GELU (erf) -> Linear``. Attention runs through
``F.scaled_dot_product_attention``.

:func:`convert_hf_bert` maps a HuggingFace ``BertModel`` / ``BertForMaskedLM`` state dict onto this module
(cross-attention weights stay at their initialisation, as in ALBEF, which starts them from scratch); a test
checks that the converted text layers reproduce ``transformers.BertModel`` at random init.
:func:`load_hf_bert` reads a local HuggingFace folder or file safely (safetensors, or ``torch.load`` with
``weights_only=True``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from toolkit.checkpoint import safe_load

__all__ = ['BertFusionEncoder', 'convert_hf_bert', 'load_hf_bert']


class BertAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections (BERT's layout); keys may come from another width.

    ``forward(x (B, L, D), context (B, N, D_ctx) or None, key_mask (B, N) bool, True = attend)`` -> (B, L, D).
    """

    def __init__(
        self, dim: int, num_heads: int, context_dim: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'hidden size {dim} is not divisible by num_heads {num_heads}')
        context_dim = context_dim or dim
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(context_dim, dim)
        self.v = nn.Linear(context_dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q = rearrange(self.q(x), 'b l (h d) -> b h l d', h=self.num_heads)
        k = rearrange(self.k(context), 'b n (h d) -> b h n d', h=self.num_heads)
        v = rearrange(self.v(context), 'b n (h d) -> b h n d', h=self.num_heads)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :].bool()
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return self.proj(rearrange(out, 'b h l d -> b l (h d)'))


class BertLayer(nn.Module):
    """One post-norm BERT layer, with a cross-attention block when ``context_dim`` is given."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        *,
        context_dim: int | None,
        eps: float,
        dropout: float,
        attn_dropout: float,
    ) -> None:
        super().__init__()
        self.self_attn = BertAttention(dim, num_heads, dropout=attn_dropout)
        self.self_norm = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = (
            BertAttention(dim, num_heads, context_dim, dropout=attn_dropout) if context_dim else None
        )
        self.cross_norm = nn.LayerNorm(dim, eps=eps) if context_dim else None
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        txt_mask: Tensor | None,
        img_tokens: Tensor | None = None,
        img_mask: Tensor | None = None,
    ) -> Tensor:
        x = self.self_norm(x + self.drop(self.self_attn(x, key_mask=txt_mask)))
        if self.cross_attn is not None:
            if img_tokens is None:
                raise ValueError('a fusion layer needs img_tokens')
            x = self.cross_norm(x + self.drop(self.cross_attn(x, img_tokens, key_mask=img_mask)))
        return self.ffn_norm(x + self.drop(self.fc2(F.gelu(self.fc1(x)))))


class BertFusionEncoder(nn.Module):
    """BERT embeddings + ``num_layers`` layers; the last ``num_layers - num_text_layers`` cross-attend.

    Args:
        vocab_size: rows of the word embedding (the tokenizer's vocabulary, plus an appended mask token).
        hidden_size: width H (BERT-base 768).
        num_layers: layers in all (BERT-base 12).
        num_text_layers: unimodal layers at the bottom (ALBEF 6); the others are fusion layers.
        num_heads: attention heads.
        ffn_dim: feed-forward width (BERT-base 3072).
        context_dim: width of the image tokens the fusion layers attend to.
        max_positions: learned absolute positions (BERT 512).
        type_vocab_size: token-type rows (BERT 2; only type 0 is used).
        pad_token_id: the padding id (its embedding row starts at zero, as BERT's).
        layer_norm_eps: BERT 1e-12.
        dropout: hidden dropout (BERT 0.1).
        attn_dropout: attention-probability dropout (BERT 0.1).
        init_std: standard deviation of the normal initialisation of the linear and embedding weights (BERT
            0.02). From scratch, 0.02 makes attention nearly uniform and its output tiny, so the first token
            hardly depends on the text; a larger value lets ITC start (see the Shapes World ALBEF config).
        grad_checkpointing: recompute each layer in the backward pass while training with gradients (keeps one
            (B, L, H) input per layer instead of its attention and FFN activations).

    Shapes: ``txt_ids`` (B, L) long, ``txt_mask`` (B, L) bool (True = real token), ``img_tokens`` (B, N, C)
    -> hidden states (B, L, H).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_text_layers: int = 6,
        num_heads: int = 12,
        ffn_dim: int = 3072,
        context_dim: int = 768,
        max_positions: int = 512,
        type_vocab_size: int = 2,
        pad_token_id: int = 0,
        layer_norm_eps: float = 1e-12,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        init_std: float = 0.02,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= num_text_layers <= num_layers:
            raise ValueError(f'num_text_layers must be in [0, {num_layers}], got {num_text_layers}')
        self.hidden_size = hidden_size
        self.num_text_layers = num_text_layers
        self.max_positions = max_positions
        self.grad_checkpointing = grad_checkpointing
        self.word_embed = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
        self.pos_embed = nn.Embedding(max_positions, hidden_size)
        self.type_embed = nn.Embedding(type_vocab_size, hidden_size)
        self.embed_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.embed_drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            BertLayer(
                hidden_size,
                num_heads,
                ffn_dim,
                context_dim=context_dim if index >= num_text_layers else None,
                eps=layer_norm_eps,
                dropout=dropout,
                attn_dropout=attn_dropout,
            )
            for index in range(num_layers)
        )
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        """BERT's initialisation: normal(0, std) weights, zero biases, unit LayerNorms."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.word_embed.weight[self.word_embed.padding_idx].zero_()

    @property
    def fusion_layers(self) -> nn.ModuleList:
        return self.layers[self.num_text_layers :]  # type: ignore[return-value]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _run_layer(
        self,
        layer: nn.Module,
        x: Tensor,
        txt_mask: Tensor | None,
        img_tokens: Tensor | None = None,
        img_mask: Tensor | None = None,
    ) -> Tensor:
        # Non-reentrant checkpointing restores the RNG state, so dropout masks are the same when recomputed.
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, x, txt_mask, img_tokens, img_mask, use_reentrant=False)
        return layer(x, txt_mask, img_tokens, img_mask)

    def embed(self, txt_ids: Tensor) -> Tensor:
        if txt_ids.shape[1] > self.max_positions:
            raise ValueError(f'{txt_ids.shape[1]} tokens exceed the {self.max_positions} learned positions')
        positions = torch.arange(txt_ids.shape[1], device=txt_ids.device)
        x = self.word_embed(txt_ids) + self.pos_embed(positions)[None] + self.type_embed.weight[0]
        return self.embed_drop(self.embed_norm(x))

    def encode_text(self, txt_ids: Tensor, txt_mask: Tensor) -> Tensor:
        """The unimodal text encoder: embeddings + the first ``num_text_layers`` layers -> (B, L, H)."""
        x = self.embed(txt_ids)
        for layer in self.layers[: self.num_text_layers]:
            x = self._run_layer(layer, x, txt_mask)
        return x

    def fuse(
        self, txt_hidden: Tensor, txt_mask: Tensor, img_tokens: Tensor, img_mask: Tensor | None = None
    ) -> Tensor:
        """The fusion encoder on text hidden states (B, L, H) and image tokens (B, N, C) -> (B, L, H)."""
        x = txt_hidden
        for layer in self.fusion_layers:
            x = self._run_layer(layer, x, txt_mask, img_tokens, img_mask)
        return x

    def forward(self, txt_ids: Tensor, txt_mask: Tensor, img_tokens: Tensor) -> Tensor:
        return self.fuse(self.encode_text(txt_ids, txt_mask), txt_mask, img_tokens)


# ---------------------------------------------------------------------------------------------- converters
_HF_LAYER = {
    'attention.self.query': 'self_attn.q',
    'attention.self.key': 'self_attn.k',
    'attention.self.value': 'self_attn.v',
    'attention.output.dense': 'self_attn.proj',
    'attention.output.LayerNorm': 'self_norm',
    'crossattention.self.query': 'cross_attn.q',
    'crossattention.self.key': 'cross_attn.k',
    'crossattention.self.value': 'cross_attn.v',
    'crossattention.output.dense': 'cross_attn.proj',
    'crossattention.output.LayerNorm': 'cross_norm',
    'intermediate.dense': 'fc1',
    'output.dense': 'fc2',
    'output.LayerNorm': 'ffn_norm',
}
_HF_EMBED = {
    'embeddings.word_embeddings': 'word_embed',
    'embeddings.position_embeddings': 'pos_embed',
    'embeddings.token_type_embeddings': 'type_embed',
    'embeddings.LayerNorm': 'embed_norm',
}
_LAYER_KEY = re.compile(r'^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|gamma|beta)$')


def convert_hf_bert(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """HuggingFace BERT keys -> :class:`BertFusionEncoder` keys.

    Accepts ``BertModel`` keys and the ``bert.``-prefixed keys of ``BertForMaskedLM`` / ``BertForPreTraining``
    (old ``gamma``/``beta`` LayerNorm names too). Returns the converted dict and the keys left out (the
    pooler, the MLM/NSP heads, position ids).
    """
    converted: dict[str, Tensor] = {}
    unused: list[str] = []
    for key, value in state_dict.items():
        name = key[len('bert.') :] if key.startswith('bert.') else key
        name = name.replace('.gamma', '.weight').replace('.beta', '.bias')
        match = _LAYER_KEY.match(name)
        if match:
            index, part, kind = match.groups()
            if part in _HF_LAYER:
                converted[f'layers.{index}.{_HF_LAYER[part]}.{kind}'] = value
                continue
        else:
            stem, _, kind = name.rpartition('.')
            if stem in _HF_EMBED:
                converted[f'{_HF_EMBED[stem]}.{kind}'] = value
                continue
        unused.append(key)
    return converted, unused


def load_hf_bert(path: str) -> dict[str, Tensor]:
    """Read HuggingFace BERT weights from a local folder (``model.safetensors`` or ``pytorch_model.bin``) or a
    file, without unpickling arbitrary objects."""
    if os.path.isdir(path):
        for name in ('model.safetensors', 'pytorch_model.bin'):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise FileNotFoundError(f'{path}: no model.safetensors or pytorch_model.bin in this folder')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'BERT weights not found: {path!r}')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file

        return load_file(path)
    state = safe_load(path)
    if not isinstance(state, Mapping):
        raise ValueError(f'{path}: expected a state dict, got {type(state).__name__}')
    return dict(state.get('state_dict', state))
