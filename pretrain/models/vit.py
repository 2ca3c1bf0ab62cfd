"""Plain ViT image encoder of MaMMUT with RO-ViT's cropped positional embeddings.

Papers: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021 (the encoder); Kim et al.,
"Region-Aware Pretraining for Open-Vocabulary Object Detection with Vision Transformers" (RO-ViT), CVPR 2023,
Sec. 3.1 (cropped positional embeddings, CPE); Kuo et al., "MaMMUT", TMLR 2023 (uses this encoder).

Cropped positional embeddings: the learned embeddings live at the pretraining grid (e.g. 14x14). In training
they are bilinearly up-sampled to the grid detection fine-tuning will use (``detection_grid``, e.g. 4x the
side), a random box is taken from that (area fraction in ``crop_scale``, aspect ratio in ``crop_ratio``, like
``RandomResizedCrop``) and resized back to the input grid. In eval the full, un-cropped embeddings are used.

What differs from the papers:

* The crop-and-resize is one bilinear ``grid_sample`` of the up-sampled embeddings over a continuous box (no
  rounding of the box to whole cells). One box is shared by the whole batch unless ``crop_per_sample=True``.
  The box side is clamped to the full extent when ``scale * ratio`` asks for more than the whole grid
  (torchvision instead retries).
* ``detection_grid=None`` crops the learned grid directly (no up-sampling).
* Switches ``class_token``, ``pre_norm``, ``final_pool``, ``output_dim`` and ``patch_bias`` exist so that
  open_clip's ``VisionTransformer`` can be reproduced exactly (see :mod:`pretrain.models.converters`);
  MaMMUT itself uses none of them (no class token, pooling done by the MaMMUT model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from toolkit.registry import MODELS

__all__ = ['Attention', 'ConvStem', 'DropPath', 'Mlp', 'MaMMUTViT', 'ViTBlock', 'sample_crop_boxes']


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability ``drop_prob``."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    """Two-layer GELU MLP (exact GELU, as open_clip's default)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'width {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """``x`` (B, N, D) -> (B, N, D); ``attn_mask`` boolean (True = attend) or additive, broadcastable."""
        q, k, v = rearrange(self.qkv(x), 'b n (three h d) -> three b h n d', three=3, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(rearrange(out, 'b h n d -> b n (h d)'))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float, eps: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def sample_crop_boxes(
    num: int,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    device: torch.device | None = None,
) -> Tensor:
    """Random boxes ``(num, 4)`` as normalised ``(x0, y0, x1, y1)`` in [0, 1], drawn from torch's RNG.

    Area fraction ~ U(scale), log aspect ratio (width / height) ~ U(log ratio); a side longer than the full
    extent is clamped to it; the box position is uniform among those that fit.
    """
    area = torch.empty(num, device=device).uniform_(scale[0], scale[1])
    log_ratio = torch.empty(num, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = log_ratio.exp()
    width = (area * aspect).sqrt().clamp(max=1.0)
    height = (area / aspect).sqrt().clamp(max=1.0)
    x0 = torch.rand(num, device=device) * (1.0 - width)
    y0 = torch.rand(num, device=device) * (1.0 - height)
    return torch.stack([x0, y0, x0 + width, y0 + height], dim=1)


class ConvStem(nn.Module):
    """3x3 stride-2 conv + BatchNorm + ReLU stages up to ``stride``, then a 1x1 conv to ``embed_dim``.

    Channels double per stage and end at ``embed_dim``; ``stride`` must be a power of two.
    Shapes: (B, C, H, W) -> (B, D, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, embed_dim: int, stride: int) -> None:
        super().__init__()
        stages = stride.bit_length() - 1
        if stride < 2 or 2**stages != stride:
            raise ValueError(f'a conv stem needs a power-of-two patch size >= 2, got {stride}')
        widths = [max(embed_dim // 2 ** (stages - 1 - i), 8) for i in range(stages)]
        layers: list[nn.Module] = []
        prev = in_channels
        for width in widths:
            layers += [
                nn.Conv2d(prev, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            prev = width
        layers.append(nn.Conv2d(prev, embed_dim, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)


@MODELS.register_module()
class MaMMUTViT(BaseModule):
    """ViT image encoder with optional cropped positional embeddings (RO-ViT CPE).

    Args:
        img_size: pretraining image size (int or (H, W)); fixes the learned position grid.
        patch_size: patch side in pixels.
        in_channels: image channels.
        embed_dim: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        qkv_bias: bias in the qkv projection.
        drop_path_rate: stochastic depth rate, linearly increasing over the blocks.
        class_token: prepend a learned class token (off for MaMMUT, which pools the patch tokens).
        pre_norm: LayerNorm after adding position embeddings (open_clip's ``ln_pre``).
        final_norm: LayerNorm on the output tokens (open_clip's ``ln_post``).
        final_pool: pooling of :meth:`forward_pooled`: ``'tok'`` (class token), ``'avg'`` (patch tokens) or
            ``'none'`` (all tokens).
        output_dim: if set, a bias-free linear ``head`` maps the pooled feature to this size (open_clip
            ``proj``).
        keep_prefix_tokens: :meth:`forward` and :meth:`forward_embedded` return the class token too, first
            (openMaMMUT pools and cross-attends over all tokens, class token included).
        patch_bias: bias of the patch-embedding conv (open_clip has none).
        patch_stem: ``'linear'`` (a patch_size x patch_size conv, the standard ViT patch embedding) or
            ``'conv'`` (3x3 stride-2 convolutions reaching the same stride, then a 1x1 projection; Xiao
            et al., "Early Convolutions Help Transformers See Better", NeurIPS 2021). It trains faster from
            scratch on small data and keeps the token grid: position embeddings and cropping are unchanged.
        cropped_pos_emb: use cropped positional embeddings in training.
        detection_grid: grid side (or (h, w)) the embeddings are up-sampled to before cropping; ``None`` crops
            the pretraining grid directly. RO-ViT up-samples 14x14 to 64x64 (about 4x).
        crop_scale: range of the crop's area fraction (RO-ViT: (0.1, 1.0)).
        crop_ratio: range of the crop's aspect ratio (RO-ViT: (0.5, 2.0)).
        crop_per_sample: one box per image instead of one per batch.
        layer_norm_eps: epsilon of every LayerNorm (1e-5, as torch and open_clip; 1e-6 for timm weights).
        grad_checkpointing: recompute blocks in the backward pass while training.
        init_cfg: MMEngine init config.

    Shapes: ``images`` (B, C, H, W) -> ``img_tokens`` (B, N, D), N = (H / patch) * (W / patch).
    """

    def __init__(
        self,
        *,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        class_token: bool = False,
        pre_norm: bool = False,
        final_norm: bool = True,
        final_pool: str = 'avg',
        output_dim: int | None = None,
        keep_prefix_tokens: bool = False,
        patch_bias: bool = True,
        patch_stem: str = 'linear',
        cropped_pos_emb: bool = True,
        detection_grid: int | Sequence[int] | None = None,
        crop_scale: Sequence[float] = (0.1, 1.0),
        crop_ratio: Sequence[float] = (0.5, 2.0),
        crop_per_sample: bool = False,
        layer_norm_eps: float = 1e-5,
        grad_checkpointing: bool = False,
        init_cfg: dict | list[dict] | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if final_pool not in ('tok', 'avg', 'none'):
            raise ValueError(f"final_pool must be 'tok', 'avg' or 'none', got {final_pool!r}")
        if final_pool == 'tok' and not class_token:
            raise ValueError("final_pool='tok' needs class_token=True")
        img_h, img_w = _pair(img_size)
        if img_h % patch_size or img_w % patch_size:
            raise ValueError(f'img_size {(img_h, img_w)} is not a multiple of patch_size {patch_size}')
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.grid_size = (img_h // patch_size, img_w // patch_size)
        self.final_pool = final_pool
        self.cropped_pos_emb = cropped_pos_emb
        self.detection_grid = None if detection_grid is None else _pair(detection_grid)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f'crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}')
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f'crop_ratio must satisfy 0 < lo <= hi, got {crop_ratio}')
        self.crop_per_sample = crop_per_sample
        self.grad_checkpointing = grad_checkpointing

        if patch_stem == 'linear':
            self.patch_embed: nn.Module = nn.Conv2d(
                in_channels, embed_dim, patch_size, stride=patch_size, bias=patch_bias
            )
        elif patch_stem == 'conv':
            self.patch_embed = ConvStem(in_channels, embed_dim, patch_size)
        else:
            raise ValueError(f"patch_stem must be 'linear' or 'conv', got {patch_stem!r}")
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
        self.num_prefix_tokens = 1 if class_token else 0
        self.keep_prefix_tokens = keep_prefix_tokens
        if class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
        else:
            self.cls_token = None
            self.cls_pos_embed = None
        self.norm_pre = nn.LayerNorm(embed_dim, eps=layer_norm_eps) if pre_norm else nn.Identity()
        rates = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist() if depth > 0 else []
        self.blocks = nn.ModuleList(
            ViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, rate, layer_norm_eps) for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps) if final_norm else nn.Identity()
        self.head = nn.Linear(embed_dim, output_dim, bias=False) if output_dim else None
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            nn.init.trunc_normal_(self.cls_pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ positional embeddings
    def _pos_grid(self) -> Tensor:
        """Learned embeddings as a map (1, D, gh, gw)."""
        return rearrange(self.pos_embed, '1 (h w) d -> 1 d h w', h=self.grid_size[0], w=self.grid_size[1])

    def pos_embed_for_grid(self, grid_hw: Sequence[int]) -> Tensor:
        """Full (un-cropped) embeddings bilinearly interpolated to ``grid_hw`` -> (1, h * w, D)."""
        grid_h, grid_w = int(grid_hw[0]), int(grid_hw[1])
        if (grid_h, grid_w) == self.grid_size:
            return self.pos_embed
        pos_map = F.interpolate(self._pos_grid(), size=(grid_h, grid_w), mode='bilinear', align_corners=False)
        return rearrange(pos_map, '1 d h w -> 1 (h w) d')

    def cropped_pos_embed(self, grid_hw: Sequence[int], boxes: Tensor) -> Tensor:
        """Crop-and-resize of the up-sampled embeddings.

        Args:
            grid_hw: output grid (h, w).
            boxes: (K, 4) normalised ``(x0, y0, x1, y1)``, K = 1 (shared) or B.

        Returns:
            (K, h * w, D) embeddings of each box resized to (h, w).
        """
        pos_map = self._pos_grid()
        if self.detection_grid is not None and self.detection_grid != self.grid_size:
            pos_map = F.interpolate(pos_map, size=self.detection_grid, mode='bilinear', align_corners=False)
        grid_h, grid_w = int(grid_hw[0]), int(grid_hw[1])
        boxes = boxes.to(pos_map.dtype)
        # Sample the box at the centres of a (h, w) grid; grid_sample uses [-1, 1] with align_corners=False.
        steps_y = (torch.arange(grid_h, device=boxes.device, dtype=boxes.dtype) + 0.5) / grid_h
        steps_x = (torch.arange(grid_w, device=boxes.device, dtype=boxes.dtype) + 0.5) / grid_w
        ys = boxes[:, 1:2] + steps_y[None] * (boxes[:, 3:4] - boxes[:, 1:2])  # (K, h)
        xs = boxes[:, 0:1] + steps_x[None] * (boxes[:, 2:3] - boxes[:, 0:1])  # (K, w)
        sample_grid = torch.stack(
            [xs[:, None, :].expand(-1, grid_h, -1), ys[:, :, None].expand(-1, -1, grid_w)], dim=-1
        )
        sample_grid = sample_grid * 2.0 - 1.0
        pos_map = pos_map.expand(boxes.shape[0], -1, -1, -1)
        cropped = F.grid_sample(
            pos_map, sample_grid, mode='bilinear', padding_mode='border', align_corners=False
        )
        return rearrange(cropped, 'k d h w -> k (h w) d')

    def sample_pos_embed(self, points_xy: Tensor) -> Tensor:
        """Full learned embeddings bilinearly sampled at continuous positions -> (N, D).

        ``points_xy`` (N, 2) are (x, y) fractions of the image width and height (0 and 1 are the image
        edges): a patch centre gives exactly that patch's embedding. Video tube tokens use this.
        """
        sample_grid = (points_xy.to(self.pos_embed.dtype) * 2.0 - 1.0)[None, None]  # (1, 1, N, 2)
        sampled = F.grid_sample(
            self._pos_grid(), sample_grid, mode='bilinear', padding_mode='border', align_corners=False
        )
        return rearrange(sampled, '1 d 1 n -> n d')

    def get_pos_embed(self, grid_hw: Sequence[int], batch_size: int = 1) -> Tensor:
        """Embeddings the forward pass adds: cropped in training (if enabled), full otherwise.

        Returns (1 or B, h * w, D). Draws the crop from torch's RNG.
        """
        if self.training and self.cropped_pos_emb:
            num = batch_size if self.crop_per_sample else 1
            boxes = sample_crop_boxes(
                num, scale=self.crop_scale, ratio=self.crop_ratio, device=self.pos_embed.device
            )
            return self.cropped_pos_embed(grid_hw, boxes)
        return self.pos_embed_for_grid(grid_hw)

    # ------------------------------------------------------------------ forward
    def _embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        patches = self.patch_embed(images)
        grid_hw = (patches.shape[-2], patches.shape[-1])
        tokens = rearrange(patches, 'b d h w -> b (h w) d')
        tokens = tokens + self.get_pos_embed(grid_hw, tokens.shape[0]).to(tokens.dtype)
        if self.cls_token is not None:
            cls = (self.cls_token + self.cls_pos_embed).to(tokens.dtype).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([cls, tokens], dim=1)
        return self.norm_pre(tokens), grid_hw

    def _run_block(self, block: nn.Module, tokens: Tensor) -> Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, tokens, use_reentrant=False)
        return block(tokens)

    def forward_all_tokens(self, images: Tensor) -> Tensor:
        """``images`` (B, C, H, W) -> normed tokens (B, P + N, D), P prefix (class) tokens first."""
        tokens, _ = self._embed(images)
        for block in self.blocks:
            tokens = self._run_block(block, tokens)
        return self.norm(tokens)

    def forward_embedded(self, tokens: Tensor) -> Tensor:
        """Run already embedded tokens (B, N, D), position embeddings included (e.g. video tubes), through
        the class token, blocks and norms -> (B, N, D), class token dropped unless ``keep_prefix_tokens``."""
        if self.cls_token is not None:
            cls = (self.cls_token + self.cls_pos_embed).to(tokens.dtype).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([cls, tokens], dim=1)
        tokens = self.norm_pre(tokens)
        for block in self.blocks:
            tokens = self._run_block(block, tokens)
        return self.norm(tokens)[:, self._first_output_token :]

    @property
    def _first_output_token(self) -> int:
        return 0 if self.keep_prefix_tokens else self.num_prefix_tokens

    def forward(self, images: Tensor) -> Tensor:
        """``images`` (B, C, H, W) -> ``img_tokens`` (B, N, D): normed patch tokens, no class token (with
        ``keep_prefix_tokens``: (B, P + N, D), class token first)."""
        return self.forward_all_tokens(images)[:, self._first_output_token :]

    def forward_pooled(self, images: Tensor) -> Tensor:
        """Pooled image feature (B, D or output_dim) per ``final_pool`` and the optional ``head``."""
        tokens = self.forward_all_tokens(images)
        if self.final_pool == 'tok':
            pooled = tokens[:, 0]
        elif self.final_pool == 'avg':
            pooled = tokens[:, self.num_prefix_tokens :].mean(dim=1)
        else:
            pooled = tokens
        return self.head(pooled) if self.head is not None else pooled

    def feature_maps(self, images: Tensor, indices: Sequence[int] = (-1,), norm: bool = True) -> list[Tensor]:
        """Patch tokens after the given blocks as maps (B, D, h, w), for detection necks.

        Args:
            images: (B, C, H, W).
            indices: block indices (negative counts from the end).
            norm: apply the final LayerNorm to each map.
        """
        wanted = sorted({index % self.depth for index in indices})
        tokens, (grid_h, grid_w) = self._embed(images)
        maps: dict[int, Tensor] = {}
        for index, block in enumerate(self.blocks):
            tokens = self._run_block(block, tokens)
            if index in wanted:
                out = self.norm(tokens) if norm else tokens
                out = out[:, self.num_prefix_tokens :]
                maps[index] = rearrange(out, 'b (h w) d -> b d h w', h=grid_h, w=grid_w)
            if index == wanted[-1]:
                break
        return [maps[index % self.depth] for index in indices]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
