"""Targets of masked image modeling: BEiT v2's VQ-KD visual tokenizer, or normalised pixels as a fallback.

Papers: Peng et al., "BEiT v2: Masked Image Modeling with Vector-Quantized Visual Tokenizers", 2022, Sec. 2.1
(VQ-KD: a ViT encoder, a task layer to a 32-d code, l2-normalised nearest-neighbour lookup in an 8192-entry
codebook; the decoder and teacher only serve tokenizer training); Wang et al., "BEiT-3", CVPR 2023, Sec. 2.2
(BEiT-3 predicts BEiT v2's visual tokens of the masked patches). Reference code: microsoft/unilm
``beit2/modeling_vqkd.py``, ``beit2/norm_ema_quantizer.py``, ``beit2/modeling_finetune.py``.

A visual target maps the preprocessed images (B, 3, H, W) of the model to one target per patch:

* :class:`VQKDTokenizer` (``kind = 'classes'``): codebook ids (B, P), predicted with cross-entropy. Frozen,
  always in eval mode, no gradients. :meth:`VQKDTokenizer.load_checkpoint` reads a BEiT v2 tokenizer file
  (``torch.load(weights_only=True)`` or safetensors) in BEiT v2's key layout; the decoder, teacher and EMA
  statistics are dropped. A randomly initialised VQ-KD is a fixed random projection + quantiser: it gives
  ids without semantics (no use for real pretraining).
* :class:`PixelTarget` (``kind = 'regression'``): the fallback when no tokenizer checkpoint is available. Each
  patch's pixels (in the model's normalised input space), normalised by the patch's own mean and variance
  (MAE's ``norm_pix_loss``, He et al., CVPR 2022, Sec. 3), regressed with MSE. Not in BEiT-3.

What differs from BEiT v2: the images are un-normalised with the model's data-preprocessor statistics
(``mean``/``std``, 0-255 scale) and rescaled to [-1, 1] (BEiT v2's ``process_type='default'``), instead of
receiving the raw [0, 1] tensor; the encoder's position embeddings are not interpolated (fixed size).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from toolkit.checkpoint import safe_load
from toolkit.registry import MODELS

__all__ = ['PixelTarget', 'VQKDEncoder', 'VQKDTokenizer', 'convert_beitv2_vqkd']


class _Block(nn.Module):
    """BEiT v2's ViT block without layer scale: pre-LN attention (q/v biases, no k bias) and GELU MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(self.norm1(x), self.qkv.weight, bias)
        q, k, v = rearrange(qkv, 'b n (three h d) -> three b h n d', three=3, h=self.num_heads)
        attn = rearrange(F.scaled_dot_product_attention(q, k, v), 'b h n d -> b n (h d)')
        x = x + self.proj(attn)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class VQKDEncoder(nn.Module):
    """VQ-KD's ViT encoder (``use_mean_pooling`` layout): ``forward(images (B, 3, H, W))`` -> the patch tokens
    after ``fc_norm`` (B, P, D)."""

    def __init__(
        self, *, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads, mlp_ratio, 1e-6) for _ in range(depth))
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, images: Tensor) -> Tensor:
        x = rearrange(self.patch_embed(images), 'b d h w -> b (h w) d')
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.fc_norm(x[:, 1:])


@MODELS.register_module()
class VQKDTokenizer(nn.Module):
    """BEiT v2's VQ-KD tokenizer, frozen: ``forward(images (B, 3, H, W))`` -> codebook ids (B, P) long.

    Args:
        img_size: input side (BEiT v2: 224).
        patch_size: patch side (16).
        embed_dim: encoder width (768).
        depth: encoder layers (12).
        num_heads: encoder heads (12).
        mlp_ratio: MLP expansion (4).
        codebook_size: number of codes (8192).
        code_dim: code width (32).
        mean, std: the model's data-preprocessor statistics (0-255 scale), to undo its normalisation.
        checkpoint: a local BEiT v2 tokenizer file loaded at construction; ``None`` keeps the random init
            (ids without meaning: tests only).
    """

    kind = 'classes'

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        codebook_size: int = 8192,
        code_dim: int = 32,
        mean: Sequence[float] = (123.675, 116.28, 103.53),
        std: Sequence[float] = (58.395, 57.12, 57.375),
        checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_outputs = codebook_size
        self.encoder = VQKDEncoder(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
        )
        self.task_layer = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.Tanh(), nn.Linear(embed_dim, code_dim)
        )
        self.register_buffer('codebook', F.normalize(torch.randn(codebook_size, code_dim), dim=-1))
        self.register_buffer('mean', torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))
        self.requires_grad_(False)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        self.eval()

    def train(self, mode: bool = True) -> VQKDTokenizer:
        return super().train(False)  # frozen: always in eval mode

    def load_checkpoint(self, path: str) -> None:
        """Load a BEiT v2 VQ-KD file (``{'model': state_dict}``, ``{'state_dict': ...}`` or a bare state dict;
        ``.safetensors`` too). Raises ValueError naming ``path`` when keys or shapes do not fit."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f'VQKDTokenizer: no tokenizer checkpoint at {path!r}')
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = safe_load(path)
        for wrapper in ('model', 'state_dict'):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        try:
            converted = convert_beitv2_vqkd(state)
            own = {k: v for k, v in self.state_dict().items() if k not in ('mean', 'std')}
            missing = sorted(set(own) - set(converted))
            if missing:
                raise ValueError(f'missing keys {missing[:8]}{" ..." if len(missing) > 8 else ""}')
            for key, value in converted.items():
                if key not in own:
                    raise ValueError(f'unexpected key {key!r}')
                if value.shape != own[key].shape:
                    raise ValueError(f'{key}: shape {tuple(value.shape)}, expected {tuple(own[key].shape)}')
        except ValueError as error:
            raise ValueError(
                f'VQKDTokenizer: {path!r} is not a BEiT v2 VQ-KD tokenizer of this size: {error}'
            ) from error
        self.load_state_dict(converted, strict=False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        pixels = images.float() * self.std + self.mean  # back to 0-255
        features = self.task_layer(self.encoder(pixels / 127.5 - 1.0))  # BEiT v2 'default' pre-processing
        codes = F.normalize(features, dim=-1).flatten(0, 1)  # (B * P, C)
        distance = (
            codes.pow(2).sum(1, keepdim=True) + self.codebook.pow(2).sum(1) - 2 * codes @ self.codebook.t()
        )
        return distance.argmin(dim=1).view(features.shape[:2])


@MODELS.register_module()
class PixelTarget(nn.Module):
    """Fallback target: per-patch normalised pixels (MAE's ``norm_pix_loss``), regressed with MSE.

    Args:
        patch_size: patch side (the backbone's).
        in_chans: image channels.
        eps: variance floor of the per-patch normalisation (MAE: 1e-6).

    ``forward(images (B, C, H, W))`` -> (B, P, patch_size**2 * C) float.
    """

    kind = 'regression'

    def __init__(self, *, patch_size: int, in_chans: int = 3, eps: float = 1e-6) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_outputs = patch_size**2 * in_chans
        self.eps = eps

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        p = self.patch_size
        patches = rearrange(images.float(), 'b c (h p) (w q) -> b (h w) (p q c)', p=p, q=p)
        mean = patches.mean(dim=-1, keepdim=True)
        var = patches.var(dim=-1, keepdim=True)
        return (patches - mean) / (var + self.eps).sqrt()


# ---------------------------------------------------------------------------------------------- converters
_DROPPED = ('decoder.', 'decode_task_layer.', 'teacher', 'loss', 'scaling', 'quantize.cluster_size')


def convert_beitv2_vqkd(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """BEiT v2 ``VQKD`` state dict -> :class:`VQKDTokenizer` keys (the tokenizing part only).

    ``encoder.patch_embed.proj`` -> ``encoder.patch_embed``; ``encoder.blocks.i.attn.{qkv,q_bias,v_bias,
    proj}`` -> ``encoder.blocks.i.*``; ``encoder.blocks.i.mlp.fc{1,2}`` -> ``encoder.blocks.i.fc{1,2}``;
    ``encode_task_layer`` -> ``task_layer``; ``quantize.embedding.weight`` -> ``codebook``. The decoder, the
    teacher, the scaling layer and the quantiser's EMA statistics are dropped; a layer-scale (``gamma``) or
    other unknown key raises ValueError.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if (
            key.startswith(_DROPPED)
            or key.startswith('quantize.embedding.')
            and key != 'quantize.embedding.weight'
        ):
            continue
        if key == 'quantize.embedding.weight':
            out['codebook'] = value
            continue
        name = key.replace('encoder.patch_embed.proj.', 'encoder.patch_embed.')
        name = name.replace('.attn.', '.').replace('.mlp.', '.').replace('encode_task_layer.', 'task_layer.')
        if not name.startswith(('encoder.', 'task_layer.')) or name.startswith('encoder.head'):
            raise ValueError(f'unexpected key {key!r}')
        out[name] = value
    return out
