"""ViTDet's simple feature pyramid: every level built from the last map of a plain (single-scale) ViT.

Paper: Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection" (ViTDet), ECCV 2022,
Sec. 3 and Fig. 2(c): from the stride-16 map, stride 8 comes from one 2x2 transposed conv (stride 4 from two,
with a LayerNorm and GELU between), stride 16 is the map itself and stride 32 a 2x2 max pool; each branch then
has a 1x1 conv and a 3x3 conv, each followed by a LayerNorm over channels. RO-ViT and MaMMUT's detector use
this neck on their ViT.

What differs from ViTDet: scale factors are a free list (ViTDet: 4, 2, 1, 0.5), and ``extra_pool`` adds
max-pooled levels on top for an RPN (ViTDet's ``LastLevelMaxPool``).
"""

from __future__ import annotations

from collections.abc import Sequence

from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.nn import functional as F

from toolkit.registry import MODELS

__all__ = ['ChannelLayerNorm', 'SimpleFeaturePyramid']


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map; the output is contiguous (B, C, H, W).

    The permuted-back result would otherwise keep a channels-last memory layout, which mmcv's CPU
    ``RoIAlign`` (mmcv 2.1) reads as if it were contiguous: every RoI feature comes out scrambled.
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


def _rescale(in_channels: int, factor: float) -> tuple[nn.Module, int]:
    """The resampling part of one branch and its output channels."""
    if factor == 4.0:
        half, quarter = in_channels // 2, in_channels // 4
        layers = nn.Sequential(
            nn.ConvTranspose2d(in_channels, half, 2, stride=2),
            ChannelLayerNorm(half),
            nn.GELU(),
            nn.ConvTranspose2d(half, quarter, 2, stride=2),
        )
        return layers, quarter
    if factor == 2.0:
        return nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2), in_channels // 2
    if factor == 1.0:
        return nn.Identity(), in_channels
    if factor == 0.5:
        return nn.MaxPool2d(2, stride=2), in_channels
    raise ValueError(f'SimpleFeaturePyramid: scale factor {factor} is not one of 4, 2, 1, 0.5')


@MODELS.register_module()
class SimpleFeaturePyramid(BaseModule):
    """Multi-scale maps from one ViT map (ViTDet).

    Args:
        in_channels: channels of the backbone map (the ViT width D).
        out_channels: channels of every output level.
        scale_factors: resampling of each level relative to the input map, finest first (4, 2, 1 or 0.5).
        extra_pool: max-pooled (stride 2) levels appended after the last one.
        init_cfg: mmengine init config.

    Input: a tuple or list whose last element is (B, D, h, w). Output: a tuple of (B, out_channels, h * s,
    w * s) maps, finest first, then the extra levels.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        extra_pool: int = 0,
        init_cfg: dict | list[dict] | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if not scale_factors:
            raise ValueError('SimpleFeaturePyramid needs at least one scale factor')
        self.scale_factors = tuple(float(f) for f in scale_factors)
        self.extra_pool = int(extra_pool)
        self.branches = nn.ModuleList()
        for factor in self.scale_factors:
            rescale, channels = _rescale(in_channels, factor)
            self.branches.append(
                nn.Sequential(
                    rescale,
                    nn.Conv2d(channels, out_channels, 1, bias=False),
                    ChannelLayerNorm(out_channels),
                    nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                    ChannelLayerNorm(out_channels),
                )
            )

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        img_map = inputs[-1]
        outs = [branch(img_map) for branch in self.branches]
        for _ in range(self.extra_pool):
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(out.contiguous() for out in outs)  # see ChannelLayerNorm: RoIAlign needs it
