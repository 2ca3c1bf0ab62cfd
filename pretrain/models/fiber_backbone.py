"""FIBER's fusion backbones: mmdet's Swin Transformer and a RoBERTa, fused by gated cross-attention on top.

Paper: Dou et al., "Coarse-to-Fine Vision-Language Pre-training with Fusion in the Backbone" (FIBER),
NeurIPS 2022, Sec. 3.1 (fusion in the backbone). Reference code: microsoft/FIBER (``coarse_grained/fiber/
modules/{swin_transformer,roberta,fiber_module}.py``, ``fine_grained/maskrcnn_benchmark/modeling/backbone/
fusion_swin_transformer_v2.py`` and ``language_backbone/roberta_fused_model_v2.py``).

The image backbone is ``mmdet.models.backbones.SwinTransformer`` (``self.image``; its stages, blocks, patch
merging and output norms are used as they are, so mmdet Swin weights load into it unchanged) and the text
backbone a ``transformers`` ``RobertaModel`` without pooler (``self.text``). Both are run block by block here.
The last ``fusion_layers`` (K) Swin blocks, counted across stages from the end (Swin-T (2, 2, 6, 2), K=6: the
last 4 blocks of stage 3 and both of stage 4), and the last K RoBERTa layers are paired: at the k-th paired
step the image block's cross-attention reads the text state entering the k-th fused text layer and that
layer's cross-attention reads the image tokens entering the k-th fused block (after patch merging when the
block opens a stage), as FIBER's ``infer`` does. Every update goes through a scalar gate ``alpha``
initialised to 0 (:class:`~pretrain.models.fiber_fusion.GatedCrossAttention`), so at initialisation the model
is exactly the two uni-modal backbones.

Where the cross-attention sits (where FIBER puts it, which keeps parity with its checkpoints exact):

* image: inside the fused Swin block, on the output of the (shifted-)window self-attention, before the
  residual and under the same stochastic depth: ``a = W-MSA(norm1(x)); a = a + alpha * xattn(a, text);
  x = x + drop_path(a); x = x + FFN(norm2(x))``. To share the drop-path, the fused blocks' ``attn.drop``
  (a parameter-free DropPath) is moved into ``image_drop_paths``; run the fused model through this class,
  not ``self.image.forward``, which would skip it in training.
* text: inside the fused RoBERTa layer, on the dropped-out self-attention output projection, before the
  residual and the post-attention LayerNorm: ``a = dense(SA(h)); a = a + alpha * xattn(a, image);
  h = LN(a + h); h = LN(h + FFN(h))``. Image tokens have no padding, so this side needs no mask; text padding
  is masked on the image side.

Switches: ``fusion`` (constructor default, ``forward`` override) turns all cross-attention off (a dual
encoder with the same weights); ``image_to_text`` is "image tokens attend to the text", ``text_to_image`` is
"text tokens attend to the image" (a captioner keeps only ``text_to_image``, with ``causal_text=True``).

What differs from FIBER: attention runs in ``F.scaled_dot_product_attention`` (our own text self-attention on
RoBERTa's ``query``/``key``/``value`` weights; the Swin window attention stays mmdet's); ``with_cp``
checkpoints every Swin block and RoBERTa layer non-reentrantly here instead of mmdet's reentrant ``with_cp``;
FIBER's coarse-grained fused text path skips the very last LayerNorm (``last_norm``), ours does not unless
``fused_text_last_norm=False``; the official Swin drops the window shift in a stage whose map fits in one
window (FIBER coarse: the last stage, window = image size / 32), mmdet's always shifts unless the stage is
listed in ``unshifted_stages``. Both switches default to today's behaviour; the released-weights configs set
them.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, cast

import torch
from einops import rearrange
from mmdet.models.backbones import SwinTransformer
from mmengine.model import BaseModule
from mmengine.model.weight_init import initialize
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from transformers import RobertaConfig, RobertaModel

from toolkit.registry import MODELS

from .fiber_fusion import GatedCrossAttention, key_padding_mask

__all__ = [
    'FIBER_PRESETS',
    'ROBERTA_BASE',
    'SWIN_B',
    'SWIN_T',
    'FIBERBackbone',
    'FIBERImageOutput',
    'FIBEROutput',
]

# RoBERTa-base (Liu et al. 2019), the text backbone of every FIBER model: Hugging Face's roberta-base config.
ROBERTA_BASE: dict[str, Any] = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=514,  # 512 positions + padding_idx 1 offset of RoBERTa's position ids
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)
# Swin-T/B (Liu et al. 2021, Table 1) in mmdet's argument names. drop_path_rate 0.2 is the default of FIBER's
# fine-grained SwinTransformer (its COCO fine-tuning config raises Swin-B to 0.4).
SWIN_T: dict[str, Any] = dict(
    embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, drop_path_rate=0.2
)
SWIN_B: dict[str, Any] = dict(
    pretrain_img_size=384,  # the ImageNet-22k 384 px Swin-B FIBER starts from (window 12)
    embed_dims=128,
    depths=(2, 2, 18, 2),
    num_heads=(4, 8, 16, 32),
    window_size=12,
    drop_path_rate=0.2,
)
# K = 6 fused blocks/layers in both FIBER models (paper Sec. 3.1; NUM_FUSE_BLOCK in their code).
FIBER_PRESETS: dict[str, dict[str, Any]] = {
    'fiber-t': dict(image=SWIN_T, text=ROBERTA_BASE, fusion_layers=6),
    'fiber-b': dict(image=SWIN_B, text=ROBERTA_BASE, fusion_layers=6),
}


class FIBERImageOutput(NamedTuple):
    """Image side: ``image_feats`` NCHW maps at the Swin ``out_indices`` (normed, like mmdet's Swin),
    ``image_tokens`` (B, H*W, C) last-stage tokens before any norm, ``image_hw`` their grid (H, W)."""

    image_feats: tuple[Tensor, ...]
    image_tokens: Tensor
    image_hw: tuple[int, int]


class FIBEROutput(NamedTuple):
    """:class:`FIBERImageOutput` plus ``text_hidden`` (B, L, D), the last RoBERTa hidden state, and
    ``text_mask`` (B, L) bool, True for real tokens."""

    image_feats: tuple[Tensor, ...]
    image_tokens: Tensor
    image_hw: tuple[int, int]
    text_hidden: Tensor
    text_mask: Tensor


@dataclass
class _ImageState:
    tokens: Tensor
    hw: tuple[int, int]
    feats: list[Tensor] = field(default_factory=list)


def _build_swin(image: dict[str, Any]) -> Any:
    cfg = dict(image)
    kind = cfg.pop('type', 'SwinTransformer')
    if kind not in ('SwinTransformer', 'mmdet.SwinTransformer'):
        raise ValueError(f'FIBERBackbone: image must configure an mmdet SwinTransformer, got type={kind!r}')
    if 'with_cp' in cfg:
        raise ValueError(
            'FIBERBackbone: set with_cp on FIBERBackbone, not in image (it checkpoints every block itself)'
        )
    return SwinTransformer(**cfg)


def _build_roberta(text: dict[str, Any], preset: dict[str, Any]) -> RobertaModel:
    cfg = dict(text)
    pretrained = cfg.pop('pretrained', None)
    if pretrained is not None:
        path = os.path.expanduser(os.fspath(pretrained))
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f'FIBERBackbone: text pretrained={path} is not a folder; a local Hugging Face RoBERTa folder '
                '(config.json + weights) is expected, nothing is downloaded'
            )
        # The checkpoint's own config rules; only keys given next to ``pretrained`` override it.
        model = RobertaModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False, **cfg)
    else:
        config = RobertaConfig(**{**preset, **cfg})  # type: ignore[no-untyped-call]
        model = RobertaModel(config, add_pooling_layer=False)  # type: ignore[no-untyped-call]
    config = model.config
    if getattr(config, 'position_embedding_type', 'absolute') != 'absolute':
        raise ValueError(
            f'FIBERBackbone: RoBERTa position_embedding_type={config.position_embedding_type!r} is not '
            'supported (absolute only)'
        )
    if config.is_decoder or config.add_cross_attention:
        raise ValueError(
            'FIBERBackbone: the RoBERTa config must be an encoder without its own cross-attention '
            '(is_decoder=False, add_cross_attention=False); the fusion modules are added by FIBERBackbone'
        )
    return model


@MODELS.register_module()
class FIBERBackbone(BaseModule):
    """Swin image and RoBERTa text backbones with FIBER's gated co-attention in their last K blocks/layers.

    Args:
        image: ``mmdet.models.backbones.SwinTransformer`` keyword arguments (merged over the preset's);
            ``None`` = the preset's, or mmdet's Swin-T defaults without a preset. ``out_indices`` picks
            ``image_feats``.
        text: ``transformers.RobertaConfig`` keyword arguments (merged over the preset's; without a preset,
            Hugging Face's defaults fill the rest), or ``pretrained=<local folder>`` (loaded with
            ``local_files_only=True``; the preset's text config is then ignored, other keys override the
            checkpoint's config); ``None`` = the preset's, or :data:`ROBERTA_BASE` without a preset.
        fusion_layers: K, the number of fused Swin blocks (from the end, across stages) and RoBERTa layers;
            ``None`` = the preset's, else 6 (FIBER).
        fusion: default of ``forward(fusion=...)``; False runs a dual encoder.
        image_to_text: default for "image tokens attend to the text".
        text_to_image: default for "text tokens attend to the image".
        fusion_num_heads: heads of every cross-attention; ``None`` = the heads of the side's self-attention
            (FIBER: the Swin stage's heads on the image side, RoBERTa's on the text side).
        image_query_norm: LayerNorm on the image-side query (FIBER coarse-grained ``norm_i2t_i``; its
            fine-grained detection code has none).
        with_cp: gradient checkpointing of every Swin block and RoBERTa layer (training only).
        unshifted_stages: Swin stages whose odd blocks attend in unshifted windows (the official Swin, and
            FIBER's coarse-grained model, drop the shift when a stage's map fits in one window: the last stage
            at image size = 32 x window); ``()`` = mmdet's Swin, which shifts every odd block.
        fused_text_last_norm: False skips the output LayerNorm of the last RoBERTa layer in fused passes
            (FIBER coarse-grained ``infer``, ``last_norm``); uni-modal passes keep it.
        preset: ``'fiber-t'`` or ``'fiber-b'`` (:data:`FIBER_PRESETS`) as the base of ``image``/``text``.
        init_cfg: mmengine init config of this module (the Swin keeps its own ``image['init_cfg']``).

    ``forward(images (B, 3, H, W), input_ids (B, L), attention_mask (B, L))`` -> :class:`FIBEROutput`;
    :meth:`encode_image` / :meth:`encode_text` run the uni-modal backbones (fusion off).
    """

    PRESETS = FIBER_PRESETS

    def __init__(
        self,
        *,
        image: dict[str, Any] | None = None,
        text: dict[str, Any] | None = None,
        fusion_layers: int | None = None,
        fusion: bool = True,
        image_to_text: bool = True,
        text_to_image: bool = True,
        fusion_num_heads: int | None = None,
        image_query_norm: bool = False,
        with_cp: bool = False,
        unshifted_stages: Sequence[int] = (),
        fused_text_last_norm: bool = True,
        preset: str | None = None,
        init_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        base: dict[str, Any] = {}
        if preset is not None:
            if preset not in FIBER_PRESETS:
                raise KeyError(f'FIBERBackbone: unknown preset {preset!r}; known: {sorted(FIBER_PRESETS)}')
            base = copy.deepcopy(FIBER_PRESETS[preset])
        image_cfg = {**base.get('image', {}), **(image or {})}
        text_cfg = dict(text or {})
        # Without a preset, ``text`` kwargs are plain RobertaConfig kwargs (HF defaults); None = RoBERTa-base.
        text_preset = base.get('text', ROBERTA_BASE if text is None else {})
        if fusion_layers is None:
            fusion_layers = int(base.get('fusion_layers', 6))

        self.image = _build_swin(image_cfg)
        self.text = _build_roberta(text_cfg, text_preset)
        self.fusion = fusion
        self.image_to_text = image_to_text
        self.text_to_image = text_to_image
        self.with_cp = with_cp
        self.fused_text_last_norm = fused_text_last_norm

        stages = self.image.stages
        for stage_id in unshifted_stages:
            if not 0 <= stage_id < len(stages):
                raise ValueError(
                    f'FIBERBackbone: unshifted_stages has {stage_id}, Swin stages are 0..{len(stages) - 1}'
                )
            for block in stages[stage_id].blocks:
                block.attn.shift_size = 0  # mmdet's ShiftWindowMSA shifts (and masks) only if > 0
        self._image_blocks = [(s, j) for s, stage in enumerate(stages) for j in range(len(stage.blocks))]
        num_text_layers = len(self.text.encoder.layer)
        if not 0 <= fusion_layers <= min(len(self._image_blocks), num_text_layers):
            raise ValueError(
                f'FIBERBackbone: fusion_layers={fusion_layers} must be in [0, min({len(self._image_blocks)} '
                f'Swin blocks, {num_text_layers} RoBERTa layers)]'
            )
        self.fusion_layers = fusion_layers
        self._num_plain_text = num_text_layers - fusion_layers
        fused_blocks = self._image_blocks[len(self._image_blocks) - fusion_layers :]
        self._fused_index = {block: k for k, block in enumerate(fused_blocks)}

        text_dim = self.text.config.hidden_size
        text_heads = self.text.config.num_attention_heads
        self.image_cross_attn = nn.ModuleList()
        self.text_cross_attn = nn.ModuleList()
        self.image_drop_paths = nn.ModuleList()
        for s, j in fused_blocks:
            block = stages[s].blocks[j]
            width = block.norm1.normalized_shape[0]
            self.image_cross_attn.append(
                GatedCrossAttention(
                    dim=width,
                    context_dim=text_dim,
                    num_heads=fusion_num_heads or block.attn.w_msa.num_heads,
                    qkv_bias=image_cfg.get('qkv_bias', True),
                    query_norm=image_query_norm,
                    attn_drop=image_cfg.get('attn_drop_rate', 0.0),
                    proj_drop=image_cfg.get('drop_rate', 0.0),
                )
            )
            self.text_cross_attn.append(
                GatedCrossAttention(
                    dim=text_dim,
                    context_dim=width,  # the image tokens entering block (s, j) are stage s wide
                    num_heads=fusion_num_heads or text_heads,
                    attn_drop=self.text.config.attention_probs_dropout_prob,
                    proj_drop=self.text.config.hidden_dropout_prob,
                    norm_eps=self.text.config.layer_norm_eps,
                )
            )
            # The fused block applies its attention drop-path after adding the cross-attention (as FIBER).
            self.image_drop_paths.append(block.attn.drop)
            block.attn.drop = nn.Identity()

    @property
    def fused_image_blocks(self) -> list[tuple[int, int]]:
        """(stage, block) of the fused Swin blocks, in pairing order."""
        return sorted(self._fused_index, key=self._fused_index.__getitem__)

    @property
    def fused_text_layers(self) -> list[int]:
        """Indices of the fused RoBERTa layers, in pairing order."""
        return list(range(self._num_plain_text, len(self.text.encoder.layer)))

    def init_weights(self) -> None:
        """mmdet's Swin initialisation (from scratch, or its own ``init_cfg`` checkpoint), then this module's
        ``init_cfg`` if any (e.g. ``Pretrained`` with a converted FIBER checkpoint); RoBERTa and the fusion
        modules otherwise keep what they got at construction (or from ``pretrained``)."""
        self.image.init_weights()
        if self.init_cfg is not None:
            initialize(self, self.init_cfg)
        self._is_init = True

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """The ``with_cp`` switch, under the name the pretraining encoders use."""
        self.with_cp = enable

    # ----------------------------------------------------------------------------------------------- running
    def _maybe_cp(self, fn: Callable[..., Tensor], *args: Any) -> Tensor:
        if self.with_cp and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _directions(self, fusion: bool | None, i2t: bool | None, t2i: bool | None) -> tuple[bool, bool]:
        on = (self.fusion if fusion is None else fusion) and self.fusion_layers > 0
        use_i2t = on and (self.image_to_text if i2t is None else i2t)
        use_t2i = on and (self.text_to_image if t2i is None else t2i)
        return use_i2t, use_t2i

    def _embed_image(self, images: Tensor) -> _ImageState:
        if images.dim() != 4:
            raise ValueError(f'FIBERBackbone: images must be (B, C, H, W), got {tuple(images.shape)}')
        swin = self.image
        tokens, hw = swin.patch_embed(images)
        if swin.use_abs_pos_embed:
            tokens = tokens + swin.absolute_pos_embed
        return _ImageState(swin.drop_after_pos(tokens), tuple(hw))

    @staticmethod
    def _fused_block(
        block: Any,
        drop_path: Any,
        cross_attn: GatedCrossAttention | None,
        hw: tuple[int, int],
        x: Tensor,
        context: Tensor | None,
        context_mask: Tensor | None,
    ) -> Tensor:
        attn = block.attn(block.norm1(x), hw)  # (shifted-)window attention, its drop-path moved out
        if cross_attn is not None and context is not None:
            attn = attn + cross_attn(attn, context, context_mask)
        x = x + drop_path(attn)
        return block.ffn(block.norm2(x), identity=x)

    def _image_step(
        self,
        state: _ImageState,
        stage_id: int,
        block_id: int,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> None:
        swin = self.image
        stage = swin.stages[stage_id]
        block = stage.blocks[block_id]
        k = self._fused_index.get((stage_id, block_id))
        if k is None:
            state.tokens = self._maybe_cp(partial(block, hw_shape=state.hw), state.tokens)
        else:
            cross_attn = cast(GatedCrossAttention, self.image_cross_attn[k]) if context is not None else None
            fn = partial(self._fused_block, block, self.image_drop_paths[k], cross_attn, state.hw)
            state.tokens = self._maybe_cp(fn, state.tokens, context, context_mask)
        if block_id < len(stage.blocks) - 1:
            return
        if stage_id in swin.out_indices:  # the stage output, before patch merging (as mmdet's Swin)
            feat = getattr(swin, f'norm{stage_id}')(state.tokens)
            h, w = state.hw
            state.feats.append(rearrange(feat, 'b (h w) c -> b c h w', h=h, w=w).contiguous())
        if stage.downsample is not None:
            state.tokens, hw = stage.downsample(state.tokens, state.hw)
            state.hw = tuple(hw)

    def _text_layer(
        self,
        layer: Any,
        cross_attn: GatedCrossAttention | None,
        last_norm: bool,
        hidden: Tensor,
        self_mask: Tensor,
        context: Tensor | None,
    ) -> Tensor:
        attention = layer.attention
        heads = attention.self.num_attention_heads
        q, k, v = (
            rearrange(proj(hidden), 'b l (h d) -> b h l d', h=heads)
            for proj in (attention.self.query, attention.self.key, attention.self.value)
        )
        dropout = self.text.config.attention_probs_dropout_prob if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self_mask, dropout_p=dropout)
        out = attention.output.dropout(attention.output.dense(rearrange(out, 'b h l d -> b l (h d)')))
        if cross_attn is not None and context is not None:
            out = out + cross_attn(out, context)  # image tokens: no padding, no mask
        hidden = attention.output.LayerNorm(out + hidden)
        if last_norm:
            return layer.output(layer.intermediate(hidden), hidden)
        output = layer.output
        return output.dropout(output.dense(layer.intermediate(hidden))) + hidden

    def _text_step(
        self,
        index: int,
        hidden: Tensor,
        self_mask: Tensor,
        context: Tensor | None = None,
        *,
        last_norm: bool = True,
    ) -> Tensor:
        k = index - self._num_plain_text
        cross_attn = None
        if context is not None and k >= 0:
            cross_attn = cast(GatedCrossAttention, self.text_cross_attn[k])
        fn = partial(self._text_layer, self.text.encoder.layer[index], cross_attn, last_norm)
        return self._maybe_cp(fn, hidden, self_mask, context)

    def _text_inputs(
        self, input_ids: Tensor, attention_mask: Tensor | None, causal: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if input_ids.dim() != 2:
            raise ValueError(f'FIBERBackbone: input_ids must be (B, L), got {tuple(input_ids.shape)}')
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(
                f'FIBERBackbone: attention_mask {tuple(attention_mask.shape)} does not match input_ids '
                f'{tuple(input_ids.shape)}'
            )
        key_mask = key_padding_mask(attention_mask)  # (B, 1, 1, L)
        self_mask = key_mask
        if causal:
            length = input_ids.shape[1]
            tril = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
            self_mask = key_mask & tril
        hidden = self.text.embeddings(input_ids=input_ids)
        return hidden, attention_mask.bool(), key_mask, self_mask

    # ------------------------------------------------------------------------------------------------ public
    def encode_image(self, images: Tensor) -> FIBERImageOutput:
        """The Swin alone (no fusion): ``images`` (B, 3, H, W) -> :class:`FIBERImageOutput`."""
        state = self._embed_image(images)
        for stage_id, block_id in self._image_blocks:
            self._image_step(state, stage_id, block_id)
        return FIBERImageOutput(tuple(state.feats), state.tokens, state.hw)

    def encode_text(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, causal: bool = False
    ) -> Tensor:
        """RoBERTa alone (no fusion): ``input_ids`` (B, L), ``attention_mask`` (B, L) -> (B, L, D)."""
        hidden, _, _, self_mask = self._text_inputs(input_ids, attention_mask, causal)
        for index in range(len(self.text.encoder.layer)):
            hidden = self._text_step(index, hidden, self_mask)
        return hidden

    def forward(
        self,
        images: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        fusion: bool | None = None,
        image_to_text: bool | None = None,
        text_to_image: bool | None = None,
        causal_text: bool = False,
    ) -> FIBEROutput:
        """Both backbones, fused in their last K blocks/layers unless switched off.

        Args:
            images: (B, 3, H, W).
            input_ids: (B, L) RoBERTa token ids.
            attention_mask: (B, L), 1/True for real tokens; ``None`` = no padding.
            fusion, image_to_text, text_to_image: override the constructor's switches for this call.
            causal_text: causal text self-attention (captioning; needs ``image_to_text`` off).
        """
        use_i2t, use_t2i = self._directions(fusion, image_to_text, text_to_image)
        if causal_text and use_i2t:
            raise ValueError(
                'FIBERBackbone: causal_text with image_to_text fusion lets the image tokens carry later text '
                'tokens to earlier ones; pass image_to_text=False (text attends to the image only)'
            )
        if images.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f'FIBERBackbone: {images.shape[0]} images but {input_ids.shape[0]} texts in the batch'
            )
        text, text_mask, key_mask, self_mask = self._text_inputs(input_ids, attention_mask, causal_text)
        image = self._embed_image(images)
        num_fused = self.fusion_layers if (use_i2t or use_t2i) else 0
        num_plain_image = len(self._image_blocks) - num_fused
        num_plain_text = len(self.text.encoder.layer) - num_fused
        for stage_id, block_id in self._image_blocks[:num_plain_image]:
            self._image_step(image, stage_id, block_id)
        for index in range(num_plain_text):
            text = self._text_step(index, text, self_mask)
        for k in range(num_fused):
            stage_id, block_id = self._image_blocks[num_plain_image + k]
            image_in, text_in = image.tokens, text  # both sides read the other's state entering this step
            self._image_step(image, stage_id, block_id, text_in if use_i2t else None, key_mask)
            last_norm = self.fused_text_last_norm or k < num_fused - 1
            text = self._text_step(
                num_plain_text + k, text_in, self_mask, image_in if use_t2i else None, last_norm=last_norm
            )
        return FIBEROutput(tuple(image.feats), image.tokens, image.hw, text, text_mask)
