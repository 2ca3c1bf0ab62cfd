"""Modulated deformable convolution (DCNv2: Zhu et al., "Deformable ConvNets v2", CVPR 2019) in plain
PyTorch, equal to mmcv's compiled ``ModulatedDeformConv2d`` op (its offset layout, and its reading of offsets
and masks with the output's geometry, which DyHead relies on), as a function and as a drop-in subclass of
mmcv's module. Used by the DyHead of :mod:`detection.models.grounding_head` (``dcn_impl='torch'``).
"""

from __future__ import annotations

import torch
from einops import rearrange
from mmcv.ops import ModulatedDeformConv2d
from torch import Tensor
from torch.nn import functional as F

__all__ = ['TorchModulatedDeformConv2d', 'modulated_deform_conv2d']


def modulated_deform_conv2d(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
) -> Tensor:
    """Modulated deformable convolution (DCNv2, Zhu et al., CVPR 2019) in plain PyTorch, as mmcv's op.

    Every kernel tap samples ``x`` bilinearly (zero outside) at its regular position plus ``offset`` (pairs
    (dy, dx) per tap, mmcv's layout), is scaled by ``mask`` and the taps are mixed by ``weight``. One group,
    one deformable group. ``grid_sample`` + ``einsum`` make it device-agnostic and autocast-friendly, and on
    CPU its backward is about 10x faster than mmcv's compiled kernel.

    Shapes: ``x`` (B, C, H, W), ``offset`` (B, 2*k*k, Ho, Wo), ``mask`` (B, k*k, Ho, Wo), ``weight``
    (O, C, k, k) -> (B, O, Ho, Wo).
    """
    b, c, h, w = x.shape
    out_channels, in_channels, kh, kw = weight.shape
    if in_channels != c:
        raise ValueError(
            f'modulated_deform_conv2d: {c} input channels, weight expects {in_channels} (groups=1)'
        )
    ho = (h + 2 * padding - (dilation * (kh - 1) + 1)) // stride + 1
    wo = (w + 2 * padding - (dilation * (kw - 1) + 1)) // stride + 1
    taps = kh * kw
    ky, kx = torch.meshgrid(
        torch.arange(kh, device=x.device) * dilation,
        torch.arange(kw, device=x.device) * dilation,
        indexing='ij',
    )
    rows = (torch.arange(ho, device=x.device) * stride - padding)[None, :, None] + ky.reshape(taps, 1, 1)
    cols = (torch.arange(wo, device=x.device) * stride - padding)[None, None, :] + kx.reshape(taps, 1, 1)
    # Like mmcv's kernel, read offset and mask with the output's geometry: DyHead passes the offsets computed
    # on level l to the convolution of the coarser level l + 1, a larger map of which mmcv reads the first
    # 2*k*k*Ho*Wo values per image. Kept for parity with GLIP/FIBER weights; smaller maps are an error.
    need = taps * ho * wo
    if offset.shape[1:].numel() < 2 * need or mask.shape[1:].numel() < need:
        raise ValueError(
            f'modulated_deform_conv2d: offset {tuple(offset.shape)} / mask {tuple(mask.shape)} are too small '
            f'for a {ho}x{wo} output of {taps} taps'
        )
    offset = offset.reshape(b, -1)[:, : 2 * need].float().view(b, taps, 2, ho, wo)
    mask = mask.reshape(b, -1)[:, :need]
    ys = rows.float() + offset[:, :, 0]  # (B, k*k, Ho, Wo) sampling rows, in pixels
    xs = cols.float() + offset[:, :, 1]
    # pixel p -> normalised (p + 0.5) / size * 2 - 1 with align_corners=False (exact for any size, even 1)
    grid = torch.stack(((xs + 0.5) * (2.0 / w) - 1.0, (ys + 0.5) * (2.0 / h) - 1.0), dim=-1)
    sampled = F.grid_sample(
        x,
        grid.view(b, taps * ho, wo, 2).to(x.dtype),
        mode='bilinear',
        padding_mode='zeros',
        align_corners=False,
    )
    sampled = rearrange(sampled, 'b c (k h) w -> b c k h w', k=taps) * mask.view(b, 1, taps, ho, wo).to(
        x.dtype
    )
    out = torch.einsum('bckhw,ock->bohw', sampled, weight.view(out_channels, c, taps).to(sampled.dtype))
    return out if bias is None else out + bias.view(1, -1, 1, 1).to(out.dtype)


class TorchModulatedDeformConv2d(ModulatedDeformConv2d):
    """mmcv's ``ModulatedDeformConv2d`` (same parameters and initialisation) run by
    :func:`modulated_deform_conv2d`."""

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        if self.groups != 1 or self.deform_groups != 1 or self.stride[0] != self.stride[1]:
            raise ValueError(
                'TorchModulatedDeformConv2d supports groups=1, deform_groups=1 and square strides'
            )
        return modulated_deform_conv2d(
            x, offset, mask, self.weight, self.bias, self.stride[0], self.padding[0], self.dilation[0]
        )
