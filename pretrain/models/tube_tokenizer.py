"""Sparse video tubes with gated fixed position embeddings, feeding an image ViT with video.

Paper: Piergiovanni, Kuo and Angelova, "Rethinking Video ViTs: Sparse Video Tubes for Joint Image and Video
Learning" (TubeViT), CVPR 2023, Sec. 3: a few 3D kernels ("tubes") of different shapes, strides and offsets
tokenize a clip sparsely; their tokens and 2D image patches are concatenated and passed through the same ViT
that encodes images. Sec. 3.2: fixed 3D sine-cosine position embeddings at each tube's centre. MaMMUT (Kuo et
al., TMLR 2023, Sec. 3.3) uses this to extend its image model to video.

Geometry (all in input units, frames and pixels; time axis first). A tube with kernel ``(kt, kh, kw)``,
stride ``(st, sh, sw)`` and offset ``(ot, oh, ow)`` on a ``(T, H, W)`` clip is a strided 3D convolution over
``clip[ot:, oh:, ow:]`` without padding: ``n = (L - o - k) // s + 1`` positions per axis, and the tube at
index ``i`` covers ``[o + i * s, o + i * s + k)``, so its centre is ``o + i * s + k / 2``. The 2D patches are
the image ViT's own patch embedding applied to frames ``frame_offset, frame_offset + frame_stride, ...``.

Position embeddings of every token: the image ViT's learned embeddings bilinearly sampled at the token's
spatial centre (for a 2D patch this is exactly the image embedding of that patch), plus the fixed 3D
sine-cosine embedding of its ``(t, y, x)`` centre through a learnable per-channel gate. The gate starts at 0,
so a clip initially encodes like a set of images (training starts from the image model); switches turn the
gate, the fixed embeddings, the tubes or the 2D patches off for ablations.

Defaults reproduce TubeViT's configurations for 32 x 224 x 224: tubes 8x8x8 / stride 16x32x32, 16x4x4 / stride
6x32x32 / offset (4, 8, 8), 4x12x12 / stride 16x32x32 / offset (0, 16, 16), and 1x16x16 image patches. The
paper takes the image patches at a temporal stride of 32 (one frame, 539 tokens in total); our default takes
them every 16 frames (two frames, 735 tokens), the density the MaMMUT video model uses (about 700-800 tokens
against 3,136 for dense 2x16x16 patches); :meth:`SparseTubeTokenizer.token_counts` reports the split.

What differs from the paper: tube kernels are initialised by resizing the 2D patch kernel to the tube's
spatial size (scaled to keep the response to a constant patch) and spreading it evenly over the tube's frames,
so a static clip gives the image patch response; TubeViT instead interpolates one learned 8x8x8 kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from toolkit.registry import MODELS

from .vit import MaMMUTViT

__all__ = ['DEFAULT_TUBES', 'SparseTubeTokenizer', 'TubeSpec', 'sincos_3d', 'tube_centres', 'tube_grid']

DEFAULT_TUBES: tuple[dict[str, tuple[int, int, int]], ...] = (
    dict(kernel=(8, 8, 8), stride=(16, 32, 32), offset=(0, 0, 0)),
    dict(kernel=(16, 4, 4), stride=(6, 32, 32), offset=(4, 8, 8)),
    dict(kernel=(4, 12, 12), stride=(16, 32, 32), offset=(0, 16, 16)),
)


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        return value, value, value
    if len(value) != 3:
        raise ValueError(f'{name} must be an int or (t, h, w), got {value!r}')
    return int(value[0]), int(value[1]), int(value[2])


@dataclass(frozen=True)
class TubeSpec:
    """One tube: ``kernel``, ``stride`` and ``offset`` as (t, h, w)."""

    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    offset: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any]) -> TubeSpec:
        unknown = set(cfg) - {'kernel', 'stride', 'offset'}
        if unknown:
            raise ValueError(f'unknown tube keys {sorted(unknown)} in {cfg}')
        spec = cls(
            _triple(cfg['kernel'], 'kernel'),
            _triple(cfg['stride'], 'stride'),
            _triple(cfg.get('offset', 0), 'offset'),
        )
        if min(spec.kernel) < 1 or min(spec.stride) < 1 or min(spec.offset) < 0:
            raise ValueError(f'tube {cfg}: kernel and stride must be >= 1 and offset >= 0')
        return spec


def tube_grid(spec: TubeSpec, clip_thw: Sequence[int]) -> tuple[int, int, int]:
    """Number of tube positions (nt, nh, nw) on a clip of ``clip_thw`` = (T, H, W); raises if none fit."""
    counts = []
    for axis, (length, k, s, o) in enumerate(
        zip(clip_thw, spec.kernel, spec.stride, spec.offset, strict=True)
    ):
        if length - o < k:
            name = 'THW'[axis]
            raise ValueError(f'tube {spec} does not fit a clip of {tuple(clip_thw)} along {name}')
        counts.append((int(length) - o - k) // s + 1)
    return counts[0], counts[1], counts[2]


def tube_centres(spec: TubeSpec, clip_thw: Sequence[int], device: torch.device | None = None) -> Tensor:
    """Centres (n, 3) as (t, y, x) in frames and pixels, in the tube's token order (t, then y, then x)."""
    axes = []
    for n, k, s, o in zip(tube_grid(spec, clip_thw), spec.kernel, spec.stride, spec.offset, strict=True):
        axes.append(o + torch.arange(n, device=device, dtype=torch.float32) * s + k / 2)
    grid = torch.meshgrid(*axes, indexing='ij')
    return torch.stack([g.reshape(-1) for g in grid], dim=1)


def sincos_3d(centres: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed sine-cosine embeddings (n, dim) of 3D positions ``centres`` (n, 3).

    Each axis gets ``2 * (dim // 6)`` channels (sines then cosines of ``dim // 6`` geometric frequencies,
    Vaswani et al.); the ``dim % 6`` channels left over are zero.
    """
    per_axis = dim // 6
    if per_axis < 1:
        raise ValueError(f'3D sine-cosine embeddings need dim >= 6, got {dim}')
    omega = torch.arange(per_axis, device=centres.device, dtype=torch.float32) / per_axis
    omega = temperature**-omega  # (F,)
    parts = []
    for axis in range(3):
        angles = centres[:, axis : axis + 1].float() * omega[None]  # (n, F)
        parts += [angles.sin(), angles.cos()]
    emb = torch.cat(parts, dim=1)
    return F.pad(emb, (0, dim - emb.shape[1]))


@MODELS.register_module()
class SparseTubeTokenizer(nn.Module):
    """Tokens of a clip for an image ViT: sparse tubes plus strided 2D patches, with position embeddings.

    Args:
        embed_dim: token width D (the ViT's).
        patch_size: the ViT's patch side p (2D patches use the ViT's ``patch_embed``).
        in_channels: clip channels.
        tubes: tube configs ``dict(kernel, stride, offset)`` (each an int or (t, h, w)); ``None`` uses
            :data:`DEFAULT_TUBES` (TubeViT, 32 x 224 x 224).
        frame_stride: temporal stride of the 2D patches.
        frame_offset: first frame of the 2D patches.
        use_tubes: tokenize with the tubes (off: frames only).
        use_frames: add the 2D patches of the strided frames.
        use_fixed_pos: add the fixed 3D sine-cosine embeddings.
        use_gate: scale the fixed embeddings by a learned per-channel gate (off: added with weight 1).
        gate_init: initial gate value; 0 starts from the image model.
        temperature: sine-cosine temperature.

    Shapes: ``clips`` (B, C, T, H, W) -> ``vid_tokens`` (B, N, D), tubes first (in ``tubes`` order), then the
    2D patches frame by frame; N = :meth:`token_counts` ``['total']``.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        patch_size: int,
        in_channels: int = 3,
        tubes: Sequence[dict[str, Any]] | None = None,
        frame_stride: int = 16,
        frame_offset: int = 0,
        use_tubes: bool = True,
        use_frames: bool = True,
        use_fixed_pos: bool = True,
        use_gate: bool = True,
        gate_init: float = 0.0,
        temperature: float = 10000.0,
    ) -> None:
        super().__init__()
        if not (use_tubes or use_frames):
            raise ValueError('at least one of use_tubes and use_frames must be on')
        if frame_stride < 1 or frame_offset < 0:
            raise ValueError(
                f'need frame_stride >= 1 and frame_offset >= 0, got {frame_stride}, {frame_offset}'
            )
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.frame_stride = frame_stride
        self.frame_offset = frame_offset
        self.use_frames = use_frames
        self.use_fixed_pos = use_fixed_pos
        self.temperature = temperature
        specs = [TubeSpec.from_cfg(dict(t)) for t in (DEFAULT_TUBES if tubes is None else tubes)]
        self.specs = specs if use_tubes else []
        self.tubes = nn.ModuleList(
            nn.Conv3d(in_channels, embed_dim, spec.kernel, stride=spec.stride) for spec in self.specs
        )
        for tube in self.tubes:
            nn.init.trunc_normal_(tube.weight, std=0.02)
            nn.init.zeros_(tube.bias)
        if use_fixed_pos and use_gate:
            self.pos_gate: nn.Parameter | None = nn.Parameter(torch.full((embed_dim,), float(gate_init)))
        else:
            self.pos_gate = None

    # ------------------------------------------------------------------ geometry
    def frame_indices(self, num_frames: int) -> list[int]:
        """Frames whose 2D patches are used."""
        if not self.use_frames:
            return []
        if num_frames <= self.frame_offset:
            raise ValueError(f'frame_offset {self.frame_offset} is beyond a clip of {num_frames} frames')
        return list(range(self.frame_offset, num_frames, self.frame_stride))

    def _frame_spec(self) -> TubeSpec:
        p = self.patch_size
        return TubeSpec((1, p, p), (self.frame_stride, p, p), (self.frame_offset, 0, 0))

    def token_counts(self, clip_thw: Sequence[int]) -> dict[str, int]:
        """Tokens per tube (``tube0``...), of the 2D patches (``frames``) and in ``total``, (T, H, W) clip."""
        counts = {f'tube{i}': math.prod(tube_grid(spec, clip_thw)) for i, spec in enumerate(self.specs)}
        if self.use_frames:
            counts['frames'] = math.prod(tube_grid(self._frame_spec(), clip_thw))
        counts['total'] = sum(counts.values())
        return counts

    def centres(self, clip_thw: Sequence[int], device: torch.device | None = None) -> Tensor:
        """(t, y, x) centres (N, 3) of every token, in token order."""
        specs = self.specs + ([self._frame_spec()] if self.use_frames else [])
        return torch.cat([tube_centres(spec, clip_thw, device) for spec in specs])

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def inflated_state(self, patch_weight: Tensor, patch_bias: Tensor | None) -> dict[str, Tensor]:
        """Tube parameters (a state dict of ``tubes``) inflated from a 2D patch embedding ``weight``
        (D, C, p, p) and ``bias`` (D,).

        The kernel is resized to the tube's (kh, kw), scaled by ``p * p / (kh * kw)`` (same response to a
        constant patch) and divided evenly over its kt frames: on a static clip a tube whose spatial size is
        the patch size gives exactly the 2D patch embedding of its region.
        """
        p_h, p_w = patch_weight.shape[-2:]
        state = {}
        for index, spec in enumerate(self.specs):
            k_t, k_h, k_w = spec.kernel
            weight = patch_weight.float()
            if (k_h, k_w) != (p_h, p_w):
                weight = F.interpolate(weight, size=(k_h, k_w), mode='bilinear', align_corners=False)
                weight = weight * (p_h * p_w) / (k_h * k_w)
            state[f'{index}.weight'] = (weight[:, :, None] / k_t).expand(-1, -1, k_t, -1, -1).clone()
            bias = torch.zeros(weight.shape[0]) if patch_bias is None else patch_bias.detach().float()
            state[f'{index}.bias'] = bias.clone()
        return state

    def inflate_patch_kernel(self, patch_weight: Tensor, patch_bias: Tensor | None) -> None:
        """Initialise every tube from a 2D patch embedding (see :meth:`inflated_state`)."""
        self.tubes.load_state_dict(self.inflated_state(patch_weight, patch_bias))

    # ------------------------------------------------------------------ forward
    def forward(self, clips: Tensor, vit: MaMMUTViT) -> Tensor:
        """Embed ``clips`` (B, C, T, H, W) for ``vit`` -> ``vid_tokens`` (B, N, D).

        ``vit`` provides ``patch_embed`` (the 2D patches) and ``sample_pos_embed`` (its learned embeddings at
        continuous positions); it is passed in, not owned, so its parameters stay in one place.
        """
        if clips.dim() != 5:
            raise ValueError(f'expected clips (B, C, T, H, W), got shape {tuple(clips.shape)}')
        clip_thw = tuple(int(v) for v in clips.shape[2:])
        parts = []
        for spec, tube in zip(self.specs, self.tubes, strict=True):
            o_t, o_h, o_w = spec.offset
            out = tube(clips[:, :, o_t:, o_h:, o_w:])  # (B, D, nt, nh, nw)
            parts.append(rearrange(out, 'b d t h w -> b (t h w) d'))
        frames = self.frame_indices(clip_thw[0])
        if frames:
            images = rearrange(clips[:, :, frames], 'b c t h w -> (b t) c h w')
            patches = vit.patch_embed(images)  # (B * T', D, h, w)
            parts.append(rearrange(patches, '(b t) d h w -> b (t h w) d', t=len(frames)))
        vid_tokens = torch.cat(parts, dim=1)
        centres = self.centres(clip_thw, clips.device)
        if centres.shape[0] != vid_tokens.shape[1]:
            raise RuntimeError(f'{vid_tokens.shape[1]} tokens but {centres.shape[0]} centres for {clip_thw}')
        height, width = clip_thw[1], clip_thw[2]
        points_xy = torch.stack([centres[:, 2] / width, centres[:, 1] / height], dim=1)
        pos = vit.sample_pos_embed(points_xy)  # (N, D)
        if self.use_fixed_pos:
            fixed = sincos_3d(centres, self.embed_dim, self.temperature)
            pos = pos + (fixed * self.pos_gate if self.pos_gate is not None else fixed)
        return vid_tokens + pos.to(vid_tokens.dtype)[None]
