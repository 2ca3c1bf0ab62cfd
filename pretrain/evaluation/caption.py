"""Captioning metrics of the COCO caption evaluation server (Chen et al., 2015, arXiv:1504.00325).

Captions are lower-cased and tokenized with the Stanford PTB tokenizer (punctuation dropped), then scored with
BLEU-1..4 (Papineni et al., 2002), METEOR 1.5 (Denkowski & Lavie, 2014), ROUGE-L (Lin, 2004) and CIDEr-D
(Vedantam et al., 2015) as implemented by ``pycocoevalcap``; the numbers are those of its ``COCOEvalCap``.

What differs from ``COCOEvalCap``: predictions and references are tokenized in one Java call instead of two
(the PTB tokenizer treats every line independently, so the tokens are the same), nothing is printed by
Python, only the requested scorers run, and a missing ``java`` is reported before any work. Scores are
fractions (CIDEr may exceed 1). The metric works the same for video captioning: an "image" is any sample
with an id and references.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mmengine.evaluator import BaseMetric

from toolkit.evaluation import get_sample_field
from toolkit.registry import METRICS

__all__ = ['CAPTION_METRICS', 'CaptionMetric', 'caption_scores', 'constant_caption_baseline', 'ptb_tokenize']

CAPTION_METRICS = ('BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr')
_JAVA_HELP = (
    'the PTB tokenizer and METEOR of pycocoevalcap run on Java, but no `java` executable is on PATH; '
    'install a Java runtime, e.g. `apt-get install -y default-jre-headless`'
)


def _require_java() -> None:
    if shutil.which('java') is None:
        raise RuntimeError(_JAVA_HELP)


def ptb_tokenize(captions: Mapping[Any, Sequence[str]]) -> dict[Any, list[str]]:
    """PTB-tokenize ``{key: [caption, ...]}`` in one Java call; keys whose lines vanish get ``''``."""
    _require_java()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenized = PTBTokenizer().tokenize({k: [{'caption': c} for c in caps] for k, caps in captions.items()})
    return {k: list(tokenized.get(k, [''] * len(caps))) for k, caps in captions.items()}


def _score_tokenized(
    res: dict[int, list[str]], gts: dict[int, list[str]], metrics: Sequence[str]
) -> dict[str, float]:
    """Run the requested pycocoevalcap scorers on already tokenized captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    scores: dict[str, float] = {}
    bleu_names = [name for name in metrics if name.startswith('BLEU-')]
    if bleu_names:
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        for name in bleu_names:
            scores[name] = float(bleu[int(name[-1]) - 1])
    if 'METEOR' in metrics:
        meteor = Meteor()  # starts the METEOR jar; it is stopped when the scorer is garbage collected
        scores['METEOR'] = float(meteor.compute_score(gts, res)[0])
        del meteor
    if 'ROUGE-L' in metrics:
        scores['ROUGE-L'] = float(Rouge().compute_score(gts, res)[0])
    if 'CIDEr' in metrics:
        scores['CIDEr'] = float(Cider().compute_score(gts, res)[0])
    return {name: scores[name] for name in metrics}


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    unknown = [name for name in metrics if name not in CAPTION_METRICS]
    if unknown or not metrics:
        raise ValueError(f'unknown caption metrics {unknown}; choose among {list(CAPTION_METRICS)}')
    return tuple(dict.fromkeys(metrics))


def caption_scores(
    preds: Mapping[int, str],
    refs: Mapping[int, Sequence[str]],
    metrics: Sequence[str] = ('BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr'),
) -> dict[str, float]:
    """Corpus-level caption scores of one prediction per image against its references.

    Args:
        preds: ``{img_id: predicted caption}``.
        refs: ``{img_id: [reference caption, ...]}`` with the same ids, at least one reference each.
        metrics: names among :data:`CAPTION_METRICS`.

    Returns:
        ``{name: score}`` in the order of ``metrics``.
    """
    metrics = _check_metrics(metrics)
    if set(preds) != set(refs):
        missing, extra = sorted(set(refs) - set(preds))[:5], sorted(set(preds) - set(refs))[:5]
        raise ValueError(f'preds and refs must have the same ids (missing preds {missing}, extra {extra})')
    if not preds:
        raise ValueError('caption_scores received no predictions')
    if any(len(refs[k]) == 0 for k in refs):
        raise ValueError('every image needs at least one reference caption')
    tokenized = ptb_tokenize(
        {**{('ref', k): list(v) for k, v in refs.items()}, **{('pred', k): [preds[k]] for k in preds}}
    )
    gts = {k: tokenized[('ref', k)] for k in refs}
    res = {k: tokenized[('pred', k)] for k in refs}
    return _score_tokenized(res, gts, metrics)


def _ngrams(words: Sequence[str], max_n: int = 4) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1)}


def constant_caption_baseline(
    refs: Mapping[int, Sequence[str]], *, num_candidates: int = 10
) -> tuple[str, float]:
    """The best single caption predicted for every image, and its CIDEr: a floor for captioning models.

    Exactly what is done (one PTB Java call, then at most ``2 * num_candidates`` CIDEr evaluations):

    1. references are PTB-tokenized; the candidates are the distinct non-empty tokenized references;
    2. shortlist the ``num_candidates`` most frequent candidates (exact repeats across all references), and
       the ``num_candidates`` best by a consensus score: the sum over the candidate's distinct 1- to 4-grams
       g of ``p_g * log(1 / p_g)`` (``p_g``: fraction of images whose references contain g), divided by the
       square root of their number. This mimics the TF-IDF cosine of CIDEr, where n-grams in every image
       weigh 0 and rare ones are seldom matched. Ties keep the order of first appearance;
    3. score each shortlisted caption with pycocoevalcap's CIDEr-D predicted for every image, and return the
       best (first on ties) as its first untokenized occurrence in ``refs``, with that CIDEr.

    Args:
        refs: ``{img_id: [reference caption, ...]}``.
        num_candidates: size of each shortlist.
    """
    from pycocoevalcap.cider.cider import Cider

    if not refs or any(len(v) == 0 for v in refs.values()):
        raise ValueError('constant_caption_baseline needs at least one reference per image')
    tokenized = ptb_tokenize({k: list(v) for k, v in refs.items()})
    raw_of: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for key, captions in refs.items():
        for raw, tokens in zip(captions, tokenized[key], strict=True):
            if tokens:
                raw_of.setdefault(tokens, raw)
                counts[tokens] += 1
    if not counts:
        raise ValueError('all references are empty after tokenization')

    doc_freq: Counter[tuple[str, ...]] = Counter()
    for key in refs:
        doc_freq.update(set().union(*(_ngrams(c.split()) for c in tokenized[key])))
    num_img = len(refs)

    def consensus(candidate: str) -> float:
        grams = _ngrams(candidate.split())
        fractions = [doc_freq[g] / num_img for g in grams]
        return sum(p * math.log(1 / p) for p in fractions) / math.sqrt(len(grams))

    order = list(counts)  # first appearance
    by_count = sorted(order, key=lambda c: -counts[c])[:num_candidates]
    by_consensus = sorted(order, key=lambda c: -consensus(c))[:num_candidates]
    shortlist: Iterable[str] = dict.fromkeys(by_count + by_consensus)

    best_caption, best_cider = '', -math.inf
    for candidate in shortlist:
        cider = float(Cider().compute_score(tokenized, {k: [candidate] for k in tokenized})[0])
        if cider > best_cider:
            best_caption, best_cider = candidate, cider
    return raw_of[best_caption], best_cider


@METRICS.register_module()
class CaptionMetric(BaseMetric):
    """COCO captioning scores of generated captions, see :func:`caption_scores`.

    Reads from each predicted data sample: ``img_id`` (int), ``pred_caption`` (str) and ``gt_captions``
    (list of K reference strings). Samples repeated by a distributed sampler (same ``img_id``) count once.

    Args:
        prefix: prefix of the reported keys (``caption/CIDEr``...).
        metrics: names among ``BLEU-1``..``BLEU-4``, ``METEOR``, ``ROUGE-L``, ``CIDEr``.
        save_path: when given, the predictions are also written there as a COCO results JSON list of
            ``{"image_id": int, "caption": str}``.
        collect_device: ``'cpu'`` or ``'gpu'``, where ranks gather results (see mmengine ``BaseMetric``).
    """

    default_prefix = 'caption'

    def __init__(
        self,
        *,
        prefix: str = 'caption',
        metrics: Sequence[str] = ('BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr'),
        save_path: str | None = None,
        collect_device: str = 'cpu',
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.metrics = _check_metrics(metrics)
        self.save_path = save_path

    def process(self, data_batch: Any, data_samples: Sequence[Any]) -> None:
        for sample in data_samples:
            refs = get_sample_field(sample, 'gt_captions')
            refs = [refs] if isinstance(refs, str) else [str(r) for r in refs]
            self.results.append(
                {
                    'img_id': int(get_sample_field(sample, 'img_id')),
                    'pred_caption': str(get_sample_field(sample, 'pred_caption')),
                    'gt_captions': refs,
                }
            )

    def compute_metrics(self, results: list[dict[str, Any]]) -> dict[str, float]:
        unique: dict[int, dict[str, Any]] = {}
        for result in results:
            unique.setdefault(result['img_id'], result)  # keep the first copy of a repeated sample
        if self.save_path is not None:
            directory = os.path.dirname(os.path.abspath(self.save_path))
            os.makedirs(directory, exist_ok=True)
            with open(self.save_path, 'w', encoding='utf-8') as handle:
                json.dump([{'image_id': k, 'caption': r['pred_caption']} for k, r in unique.items()], handle)
        preds = {k: r['pred_caption'] for k, r in unique.items()}
        refs = {k: r['gt_captions'] for k, r in unique.items()}
        return caption_scores(preds, refs, self.metrics)
