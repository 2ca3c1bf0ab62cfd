"""Image-text (or video-text) retrieval metrics: Recall@K both ways and median rank.

The protocol of Karpathy & Fei-Fei (2015, Sec. 4.1) used by CLIP, ALIGN and MaMMUT on COCO/Flickr30k: with N
images and M captions (caption j belongs to image ``owner[j]``; COCO has 5 per image),

* image-to-text: an image is correct at K when ANY of its captions is among its K most similar captions;
* text-to-image: a caption is correct at K when its image is among its K most similar images;
* ``rsum`` sums the recalls of both directions and ``r_mean`` averages them; ``i2t_medr``/``t2i_medr`` are
  the median (rounded down) of the 1-based rank of the first correct item.

What differs from the usual scripts: recalls are fractions in [0, 1], not percentages, and ties are broken
pessimistically (a wrong item scoring the same as the best correct one ranks before it), which makes the
result independent of the order of the samples and gives a collapsed model (all similarities equal) zero
recall instead of a lucky one. The metric works the same for videos: an "image" is any sample with one
embedding and K caption embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from mmengine.evaluator import BaseMetric

from toolkit.evaluation import get_sample_field
from toolkit.registry import METRICS

__all__ = ['RetrievalMetric', 'get_sample_field', 'retrieval_metrics', 'retrieval_ranks']

# Similarity entries processed per block when ranking, to bound memory on 5k x 25k matrices.
_BLOCK_ELEMENTS = 1 << 24


def retrieval_ranks(sim: torch.Tensor, txt_to_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based rank of the first correct item for every query, ties counted against the query.

    Args:
        sim: similarities (N, M) between N images (rows) and M captions (columns).
        txt_to_img: (M,) index in [0, N) of the image that owns each caption; every image owns at least one.

    Returns:
        ``ranks_i2t`` (N,): 1 + number of wrong captions scoring >= the image's best caption;
        ``ranks_t2i`` (M,): 1 + number of other images scoring >= the caption's own image.
    """
    if sim.dim() != 2 or txt_to_img.shape != (sim.shape[1],):
        shapes = f'{tuple(sim.shape)}, {tuple(txt_to_img.shape)}'
        raise ValueError(f'expected sim (N, M) and txt_to_img (M,), got {shapes}')
    num_img, num_txt = sim.shape
    txt_to_img = txt_to_img.long().to(sim.device)
    if num_txt and (txt_to_img.min() < 0 or txt_to_img.max() >= num_img):
        raise ValueError(f'txt_to_img must index the {num_img} images')
    captions_per_img = torch.bincount(txt_to_img, minlength=num_img)
    if (captions_per_img == 0).any():
        missing = torch.nonzero(captions_per_img == 0).flatten()[:5].tolist()
        raise ValueError(f'images {missing} have no caption; image-to-text recall is undefined for them')
    if not torch.isfinite(sim).all():
        raise ValueError('the similarity matrix holds NaN or infinite values')
    sim = sim.float()

    ranks_i2t = torch.empty(num_img, dtype=torch.long)
    rows = max(1, _BLOCK_ELEMENTS // max(num_txt, 1))
    for start in range(0, num_img, rows):
        sim_block = sim[start : start + rows]  # (b, M)
        img_index = torch.arange(start, start + sim_block.shape[0], device=sim.device)
        is_correct = txt_to_img[None, :] == img_index[:, None]  # (b, M)
        best_correct = sim_block.masked_fill(~is_correct, -math.inf).amax(dim=1, keepdim=True)  # (b, 1)
        beaten_by = (sim_block >= best_correct) & ~is_correct
        ranks_i2t[start : start + sim_block.shape[0]] = beaten_by.sum(dim=1).cpu() + 1

    ranks_t2i = torch.empty(num_txt, dtype=torch.long)
    cols = max(1, _BLOCK_ELEMENTS // max(num_img, 1))
    for start in range(0, num_txt, cols):
        sim_block = sim[:, start : start + cols]  # (N, b)
        own_score = sim_block.gather(0, txt_to_img[None, start : start + sim_block.shape[1]])  # (1, b)
        # The own image satisfies >= itself: the count is already 1 + the images that beat or tie it.
        ranks_t2i[start : start + sim_block.shape[1]] = (sim_block >= own_score).sum(dim=0).cpu()
    return ranks_i2t, ranks_t2i


def _median_rank(ranks: torch.Tensor) -> float:
    """Median of 1-based ranks, rounded down (the convention of the SCAN/VSE++ evaluation scripts)."""
    ordered = ranks.sort().values.double()
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return float(math.floor(float(median)))


def retrieval_metrics(
    sim: torch.Tensor, txt_to_img: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K both ways, their sum/mean and median ranks from a similarity matrix.

    Args:
        sim: similarities (N, M) of N images against M captions.
        txt_to_img: (M,) index of the image owning each caption.
        ks: the K of Recall@K.

    Returns:
        ``i2t_R@k`` and ``t2i_R@k`` (fractions in [0, 1]) for every k, ``rsum`` (their sum), ``r_mean`` (their
        mean), ``i2t_medr`` and ``t2i_medr`` (1-based median ranks).
    """
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f'ks must be positive integers, got {ks}')
    if sim.shape[0] == 0:
        raise ValueError('cannot compute retrieval metrics without images')
    ranks_i2t, ranks_t2i = retrieval_ranks(sim, txt_to_img)
    metrics: dict[str, float] = {}
    for direction, ranks in (('i2t', ranks_i2t), ('t2i', ranks_t2i)):
        for k in ks:
            metrics[f'{direction}_R@{int(k)}'] = float((ranks <= int(k)).double().mean())
    recalls = list(metrics.values())
    metrics['rsum'] = float(sum(recalls))
    metrics['r_mean'] = metrics['rsum'] / len(recalls)
    metrics['i2t_medr'] = _median_rank(ranks_i2t)
    metrics['t2i_medr'] = _median_rank(ranks_t2i)
    return metrics


@METRICS.register_module()
class RetrievalMetric(BaseMetric):
    """Image-text (or video-text) retrieval evaluation, see :func:`retrieval_metrics`.

    Reads from each predicted data sample: ``img_id`` (int), ``img_emb`` (D,) and ``txt_emb`` (K, D) (one row
    per reference caption; (D,) is taken as K = 1), both L2-normalised, so that the dot product is the cosine
    similarity (they are used as given). Samples repeated by a distributed sampler (same ``img_id``) count
    once.

    Args:
        prefix: prefix of the reported keys (``retrieval/i2t_R@1``...).
        ks: the K of Recall@K.
        collect_device: ``'cpu'`` or ``'gpu'``, where ranks gather results (see mmengine ``BaseMetric``).
    """

    default_prefix = 'retrieval'

    def __init__(
        self, *, prefix: str = 'retrieval', ks: Sequence[int] = (1, 5, 10), collect_device: str = 'cpu'
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f'ks must be positive integers, got {ks}')
        self.ks = tuple(int(k) for k in ks)

    def process(self, data_batch: Any, data_samples: Sequence[Any]) -> None:
        for sample in data_samples:
            img_emb = torch.as_tensor(get_sample_field(sample, 'img_emb')).detach().float().cpu()
            txt_emb = torch.as_tensor(get_sample_field(sample, 'txt_emb')).detach().float().cpu()
            if txt_emb.dim() == 1:
                txt_emb = txt_emb[None]
            if img_emb.dim() != 1 or txt_emb.dim() != 2 or txt_emb.shape[1] != img_emb.shape[0]:
                shapes = f'{tuple(img_emb.shape)}, {tuple(txt_emb.shape)}'
                raise ValueError(f'expected img_emb (D,) and txt_emb (K, D), got {shapes}')
            img_id = int(get_sample_field(sample, 'img_id'))
            self.results.append({'img_id': img_id, 'img_emb': img_emb, 'txt_emb': txt_emb})

    def compute_metrics(self, results: list[dict[str, Any]]) -> dict[str, float]:
        unique: dict[int, dict[str, Any]] = {}
        for result in results:
            unique.setdefault(result['img_id'], result)  # keep the first copy of a repeated sample
        if not unique:
            raise ValueError('RetrievalMetric received no samples')
        samples = list(unique.values())
        img_emb = torch.stack([s['img_emb'] for s in samples])  # (N, D)
        txt_emb = torch.cat([s['txt_emb'] for s in samples])  # (M, D)
        txt_to_img = torch.cat(
            [torch.full((len(s['txt_emb']),), index, dtype=torch.long) for index, s in enumerate(samples)]
        )  # (M,)
        sim = img_emb @ txt_emb.T  # (N, M)
        return retrieval_metrics(sim, txt_to_img, self.ks)
