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

Re-ranking (ALBEF / FIBER retrieval evaluation): with ``rerank_k=k`` the k most similar captions of every
image and the k most similar images of every caption are re-ordered by a finer pair score (an image-text
matching head), each pair scored once; everything outside the top-k keeps its dual-encoder order below them.
Both rankings are reported, the re-ranked one under ``itm_`` keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from mmengine.evaluator import BaseMetric

from toolkit.evaluation import get_sample_field, has_sample_field
from toolkit.registry import METRICS

__all__ = [
    'RetrievalMetric',
    'get_sample_field',
    'rerank_both_ways',
    'rerank_topk',
    'reranked_retrieval_metrics',
    'retrieval_metrics',
    'retrieval_ranks',
]

# ``pair_scores(img_index (P,), txt_index (P,)) -> scores (P,)``: a finer score of P image-caption pairs.
PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Similarity entries processed per block when ranking, to bound memory on 5k x 25k matrices.
_BLOCK_ELEMENTS = 1 << 24
# Image-caption pairs handed to a re-ranking scorer at once (each pair copies its image).
_PAIR_CHUNK = 256


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
    return _metrics_from_ranks(*retrieval_ranks(sim, txt_to_img), ks)


def _metrics_from_ranks(
    ranks_i2t: torch.Tensor, ranks_t2i: torch.Tensor, ks: Sequence[int]
) -> dict[str, float]:
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


def _lift_topk(sim: torch.Tensor, top: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``sim`` (N, M) with each row's columns ``top`` (N, k) moved above all others, in the order of
    ``scores`` (N, k): they get ``max(sim) + 1 + (how many of the row's k candidates score lower)``, so equal
    scores tie."""
    if not torch.isfinite(scores).all():
        raise ValueError('re-ranking scores hold NaN or infinite values')
    scores = scores.float()
    beaten = (scores[:, :, None] > scores[:, None, :]).sum(dim=2).float()  # (N, k)
    lifted = sim.float().clone()
    return lifted.scatter_(1, top, float(sim.max()) + 1.0 + beaten)


def rerank_topk(sim: torch.Tensor, k: int, pair_scores: PairScorer) -> torch.Tensor:
    """Re-rank every row's k most similar columns by a finer score.

    Args:
        sim: similarities (N, M), e.g. images (rows) against captions.
        k: candidates per row (at most M are taken).
        pair_scores: ``pair_scores(rows (P,), cols (P,)) -> (P,)`` finer scores of those pairs.

    Returns:
        (N, M) scores whose descending order in every row is: the top-k columns by ``pair_scores`` (equal
        scores tie), then the other columns by ``sim`` (their values unchanged).
    """
    if k < 1:
        raise ValueError(f'k must be >= 1, got {k}')
    num_rows, num_cols = sim.shape
    top = sim.topk(min(int(k), num_cols), dim=1).indices  # (N, k)
    rows = torch.arange(num_rows, device=sim.device).repeat_interleave(top.shape[1])
    scores = torch.as_tensor(pair_scores(rows, top.flatten())).to(sim.device).reshape(top.shape)
    return _lift_topk(sim, top, scores)


def rerank_both_ways(sim: torch.Tensor, k: int, pair_scores: PairScorer) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-rank the top-k captions of every image and the top-k images of every caption by
    ``pair_scores(img_index (P,), txt_index (P,)) -> (P,)``, each distinct pair scored once.

    Args:
        sim: similarities (N, M) of N images (rows) against M captions.
        k: candidates per query.
        pair_scores: finer scores of image-caption pairs.

    Returns:
        ``scores_i2t`` (N, M) and ``scores_t2i`` (M, N): per query (row), the top-k candidates by pair score
        above the others by ``sim`` (see :func:`rerank_topk`); sort a row descending to rank.
    """
    if k < 1:
        raise ValueError(f'k must be >= 1, got {k}')
    num_img, num_txt = sim.shape
    top_i2t = sim.topk(min(int(k), num_txt), dim=1).indices  # (N, k) captions per image
    top_t2i = sim.t().topk(min(int(k), num_img), dim=1).indices  # (M, k) images per caption
    img_index = torch.arange(num_img, device=sim.device)[:, None]
    txt_index = torch.arange(num_txt, device=sim.device)[:, None]
    pairs = torch.cat([(img_index * num_txt + top_i2t).flatten(), (top_t2i * num_txt + txt_index).flatten()])
    unique, inverse = torch.unique(pairs, return_inverse=True)
    scores = torch.as_tensor(pair_scores(unique // num_txt, unique % num_txt)).to(sim.device).float()
    if scores.shape != unique.shape:
        raise ValueError(f'pair_scores returned {tuple(scores.shape)} scores for {len(unique)} pairs')
    scores = scores[inverse]
    scores_i2t = _lift_topk(sim, top_i2t, scores[: top_i2t.numel()].reshape(top_i2t.shape))
    scores_t2i = _lift_topk(sim.t(), top_t2i, scores[top_i2t.numel() :].reshape(top_t2i.shape))
    return scores_i2t, scores_t2i


def reranked_retrieval_metrics(
    sim: torch.Tensor,
    txt_to_img: torch.Tensor,
    k: int,
    pair_scores: PairScorer,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """:func:`retrieval_metrics` after re-ranking the top-k captions of every image and the top-k images of
    every caption by ``pair_scores(img_index (P,), txt_index (P,)) -> (P,)`` (:func:`rerank_both_ways`)."""
    scores_i2t, scores_t2i = rerank_both_ways(sim, k, pair_scores)
    ranks_i2t, _ = retrieval_ranks(scores_i2t, txt_to_img)
    _, ranks_t2i = retrieval_ranks(scores_t2i.t(), txt_to_img)
    return _metrics_from_ranks(ranks_i2t, ranks_t2i, ks)


@METRICS.register_module()
class RetrievalMetric(BaseMetric):
    """Image-text (or video-text) retrieval evaluation, see :func:`retrieval_metrics`.

    Reads from each predicted data sample: ``img_id`` (int), ``img_emb`` (D,) and ``txt_emb`` (K, D) (one row
    per reference caption; (D,) is taken as K = 1), both L2-normalised, so that the dot product is the cosine
    similarity (they are used as given). Samples repeated by a distributed sampler (same ``img_id``) count
    once.

    With ``rerank_k > 0`` each sample must also carry ``itm_inputs`` (``dict(image=(C, H, W) model input,
    txt_ids=[one id tensor per caption]``) and ``itm_scorer`` (``scorer(images (P, C, H, W), txt_ids: list of
    P id tensors) -> (P,)``, e.g. ``FIBER.itm_scores``); the scorer is kept for this evaluation only, never in
    the collected results, and runs where ``compute_metrics`` runs (the main process). The re-ranked metrics
    are added as ``itm_i2t_R@1``... (see :func:`reranked_retrieval_metrics`).

    Args:
        prefix: prefix of the reported keys (``retrieval/i2t_R@1``...).
        ks: the K of Recall@K.
        rerank_k: candidates re-ranked per query by the pair scorer; 0 = no re-ranking.
        collect_device: ``'cpu'`` or ``'gpu'``, where ranks gather results (see mmengine ``BaseMetric``).
    """

    default_prefix = 'retrieval'

    def __init__(
        self,
        *,
        prefix: str = 'retrieval',
        ks: Sequence[int] = (1, 5, 10),
        rerank_k: int = 0,
        collect_device: str = 'cpu',
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f'ks must be positive integers, got {ks}')
        if rerank_k < 0:
            raise ValueError(f'rerank_k must be >= 0, got {rerank_k}')
        self.ks = tuple(int(k) for k in ks)
        self.rerank_k = int(rerank_k)
        self._scorer: Callable[..., torch.Tensor] | None = None

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
            result = {'img_id': img_id, 'img_emb': img_emb, 'txt_emb': txt_emb}
            if self.rerank_k:
                result.update(self._rerank_inputs(sample, len(txt_emb)))
            self.results.append(result)

    def _rerank_inputs(self, sample: Any, num_captions: int) -> dict[str, Any]:
        if not has_sample_field(sample, 'itm_inputs') or not has_sample_field(sample, 'itm_scorer'):
            raise KeyError(
                f'RetrievalMetric(rerank_k={self.rerank_k}) needs samples with itm_inputs and itm_scorer '
                '(a model with an image-text matching head, e.g. FIBER with itm_loss); set rerank_k=0'
            )
        inputs = get_sample_field(sample, 'itm_inputs')
        txt_ids = [torch.as_tensor(ids).detach().cpu() for ids in inputs['txt_ids']]
        if len(txt_ids) != num_captions:
            raise ValueError(f'itm_inputs has {len(txt_ids)} captions but txt_emb has {num_captions}')
        self._scorer = get_sample_field(sample, 'itm_scorer')
        return {'itm_image': torch.as_tensor(inputs['image']).detach().cpu(), 'itm_txt_ids': txt_ids}

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
        metrics = retrieval_metrics(sim, txt_to_img, self.ks)
        if self.rerank_k:
            metrics.update(self._reranked(samples, sim, txt_to_img))
        return metrics

    def evaluate(self, size: int) -> dict:
        try:
            return super().evaluate(size)
        finally:
            self._scorer = None  # every process drops its reference to the model's scorer

    def _reranked(self, samples: list[dict[str, Any]], sim: torch.Tensor, txt_to_img: torch.Tensor) -> dict:
        scorer, self._scorer = self._scorer, None  # held for this evaluation only
        if scorer is None:
            raise RuntimeError('RetrievalMetric: no itm_scorer was received on this process')
        images = torch.stack([s['itm_image'] for s in samples])  # (N, C, H, W)
        texts = [ids for s in samples for ids in s['itm_txt_ids']]  # M id tensors

        def pair_scores(img_index: torch.Tensor, txt_index: torch.Tensor) -> torch.Tensor:
            img_index, txt_index = img_index.cpu(), txt_index.cpu()
            chunks = []
            for start in range(0, len(img_index), _PAIR_CHUNK):  # bounded memory: each pair copies its image
                rows = slice(start, start + _PAIR_CHUNK)
                chunk_texts = [texts[int(j)] for j in txt_index[rows]]
                chunks.append(torch.as_tensor(scorer(images[img_index[rows]], chunk_texts)).float().cpu())
            return torch.cat(chunks) if chunks else torch.zeros(0)

        reranked = reranked_retrieval_metrics(sim, txt_to_img, self.rerank_k, pair_scores, self.ks)
        return {f'itm_{key}': value for key, value in reranked.items()}
