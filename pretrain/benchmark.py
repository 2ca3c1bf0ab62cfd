"""Models of the pretraining benchmarks (``tools/benchmark/train_step.py``, ``generate.py``) at chosen
sizes."""

from __future__ import annotations

import os

import torch
from mmengine.config import Config

from toolkit.registry import MODELS
from toolkit.tokenizers import TextTokenizer

__all__ = ['build_mammut']


def build_mammut(
    config: str | os.PathLike[str],
    *,
    tokenizer: TextTokenizer,
    img_size: int,
    width: int,
    depth: int,
    num_heads: int,
    contrastive_only: bool = False,
) -> torch.nn.Module:
    """MaMMUT of the model config file ``config`` (``configs/_base_/models/mammut_vit-b16-dec12.py``), its ViT
    and decoder at ``width``/``depth``.

    Everything else (patch 16, cropped positional embeddings, ``every_other`` cross-attention, focal loss,
    label smoothing, average pooling) is the config's; ``embed_dim`` is set to ``width``.
    """
    cfg = Config.fromfile(str(config)).model.to_dict()
    cfg['image_encoder'].update(img_size=img_size, embed_dim=width, depth=depth, num_heads=num_heads)
    cfg['text_decoder'].update(width=width, depth=depth, num_heads=num_heads)
    cfg.update(tokenizer=tokenizer, embed_dim=width, contrastive_only=contrastive_only)
    return MODELS.build(cfg)
