"""Tests of the retrieval and captioning metrics (pretrain.evaluation)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import BaseDataElement

import pretrain.evaluation.retrieval as retrieval_module
from pretrain.evaluation.caption import CaptionMetric, caption_scores, constant_caption_baseline
from pretrain.evaluation.retrieval import RetrievalMetric, retrieval_metrics, retrieval_ranks
from toolkit.registry import METRICS

needs_java = pytest.mark.skipif(shutil.which('java') is None, reason='pycocoevalcap needs a Java runtime')

# Three images, five captions: caption j belongs to image OWNER[j].
OWNER = torch.tensor([0, 0, 1, 2, 2])
SIM = torch.tensor(
    [
        [0.1, 0.9, 0.3, 0.95, 0.2],  # best own caption 0.9, beaten by caption 3 -> rank 2
        [0.3, 0.3, 0.3, 0.1, 0.0],  # own caption 2 ties with captions 0 and 1 -> rank 3 (ties count against)
        [0.0, 0.1, 0.2, 0.4, 0.8],  # own caption 4 is first -> rank 1
    ]
)


# -- retrieval -----------------------------------------------------------------------------------------
def test_retrieval_known_ranks_with_ties() -> None:
    ranks_i2t, ranks_t2i = retrieval_ranks(SIM, OWNER)
    assert ranks_i2t.tolist() == [2, 3, 1]
    # Columns: caption 0 ties-loses to image 1 (0.3 > 0.1), caption 2 ties image 0 at 0.3, caption 3 loses
    # to image 0.
    assert ranks_t2i.tolist() == [2, 1, 2, 2, 1]
    metrics = retrieval_metrics(SIM, OWNER, ks=(1, 2, 3))
    expected = {
        'i2t_R@1': 1 / 3,
        'i2t_R@2': 2 / 3,
        'i2t_R@3': 1.0,
        't2i_R@1': 2 / 5,
        't2i_R@2': 1.0,
        't2i_R@3': 1.0,
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    assert metrics['rsum'] == pytest.approx(sum(expected.values()))
    assert metrics['r_mean'] == pytest.approx(sum(expected.values()) / 6)
    assert metrics['i2t_medr'] == 2 and metrics['t2i_medr'] == 2


def test_retrieval_is_independent_of_sample_order() -> None:
    img_perm, txt_perm = torch.tensor([2, 0, 1]), torch.tensor([3, 1, 4, 0, 2])
    inverse_img = torch.argsort(img_perm)
    permuted = retrieval_metrics(SIM[img_perm][:, txt_perm], inverse_img[OWNER[txt_perm]], ks=(1, 2, 3))
    assert permuted == pytest.approx(retrieval_metrics(SIM, OWNER, ks=(1, 2, 3)))


def test_retrieval_median_rank_even_count_and_constant_model() -> None:
    # Image i has i wrong captions above its own one: i2t ranks 1..4; t2i ranks 4..1.
    sim = torch.tensor(
        [[0.5, 0.0, 0.0, 0.0], [0.9, 0.5, 0.0, 0.0], [0.9, 0.9, 0.5, 0.0], [0.9, 0.9, 0.9, 0.5]]
    )
    owner = torch.arange(4)
    ranks_i2t, ranks_t2i = retrieval_ranks(sim, owner)
    assert ranks_i2t.tolist() == [1, 2, 3, 4] and ranks_t2i.tolist() == [4, 3, 2, 1]
    metrics = retrieval_metrics(sim, owner, ks=(1, 10))
    assert metrics['i2t_medr'] == 2 and metrics['t2i_medr'] == 2  # floor(2.5)
    assert metrics['i2t_R@1'] == 0.25 and metrics['i2t_R@10'] == 1.0
    # A collapsed model (all similarities equal) is ranked last everywhere, not lucky by index order.
    flat = retrieval_metrics(torch.zeros(3, 5), OWNER, ks=(1, 3))
    assert flat['i2t_R@1'] == 0 and flat['t2i_R@1'] == 0 and flat['t2i_medr'] == 3
    assert retrieval_ranks(torch.zeros(3, 5), OWNER)[0].tolist() == [4, 5, 4]


def test_retrieval_matches_sorting_and_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(0)
    owner = torch.arange(7).repeat_interleave(3)[torch.randperm(21, generator=generator)]
    sim = torch.randn(7, 21, generator=generator)  # no ties
    order_i2t = sim.argsort(dim=1, descending=True)  # (N, M) caption indices, best first
    expected_i2t = [int((owner[order_i2t[i]] == i).nonzero()[0]) + 1 for i in range(7)]
    order_t2i = sim.argsort(dim=0, descending=True)  # (N, M) image indices, best first
    expected_t2i = [int((order_t2i[:, j] == owner[j]).nonzero()[0]) + 1 for j in range(21)]
    ranks_i2t, ranks_t2i = retrieval_ranks(sim, owner)
    assert ranks_i2t.tolist() == expected_i2t and ranks_t2i.tolist() == expected_t2i
    monkeypatch.setattr(retrieval_module, '_BLOCK_ELEMENTS', 16)  # several blocks each way
    blocked_i2t, blocked_t2i = retrieval_ranks(sim, owner)
    assert torch.equal(blocked_i2t, ranks_i2t) and torch.equal(blocked_t2i, ranks_t2i)


def test_retrieval_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match='no caption'):
        retrieval_ranks(torch.zeros(3, 2), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match='NaN'):
        retrieval_ranks(torch.full((1, 1), math.nan), torch.tensor([0]))
    with pytest.raises(ValueError, match='ks'):
        RetrievalMetric(ks=(0,))


def _embedding_samples(num_img: int = 6, dim: int = 8) -> list[BaseDataElement]:
    generator = torch.Generator().manual_seed(1)
    samples = []
    for img_id in range(num_img):
        img_emb = F.normalize(torch.randn(dim, generator=generator), dim=0)
        # Captions near their image, with 1 to 3 captions per image (a video clip would look the same).
        noise = torch.randn(1 + img_id % 3, dim, generator=generator)
        txt_emb = F.normalize(img_emb + 0.8 * noise, dim=1)
        samples.append(BaseDataElement(img_id=100 + img_id, img_emb=img_emb, txt_emb=txt_emb))
    return samples


def test_retrieval_metric_deduplicates_and_prefixes() -> None:
    samples = _embedding_samples()
    metric = METRICS.build(dict(type='RetrievalMetric', ks=(1, 5)))
    # A distributed sampler repeats samples to even out ranks; the repeat must not count twice. Mix the
    # BaseDataElement and dict (what mmengine's Evaluator passes) forms.
    metric.process({}, samples[:4])
    metric.process({}, [s.to_dict() for s in samples[4:]] + [samples[0].to_dict(), samples[1]])
    results = metric.evaluate(len(metric.results))

    img_emb = torch.stack([s.img_emb for s in samples])
    txt_emb = torch.cat([s.txt_emb for s in samples])
    owner = torch.cat([torch.full((len(s.txt_emb),), i) for i, s in enumerate(samples)])
    expected = retrieval_metrics(img_emb @ txt_emb.T, owner, ks=(1, 5))
    assert results == pytest.approx({f'retrieval/{k}': v for k, v in expected.items()})
    assert 0 < results['retrieval/i2t_R@1'] <= 1 and results['retrieval/t2i_R@5'] <= 1
    # With the duplicates counted the result would differ (an extra image and its captions).
    dup_txt_emb = torch.cat([txt_emb, samples[0].txt_emb, samples[1].txt_emb])
    extra_owner = [6] * len(samples[0].txt_emb) + [7] * len(samples[1].txt_emb)
    dup_owner = torch.cat([owner, torch.tensor(extra_owner)])
    with_duplicates = torch.cat([img_emb, img_emb[:2]]) @ dup_txt_emb.T
    assert retrieval_metrics(with_duplicates, dup_owner, ks=(1, 5)) != pytest.approx(expected)


def test_retrieval_metric_reports_missing_field() -> None:
    metric = RetrievalMetric()
    with pytest.raises(KeyError, match='txt_emb'):
        metric.process({}, [{'img_id': 0, 'img_emb': torch.ones(4)}])


# -- captioning ----------------------------------------------------------------------------------------
PREDS = {
    1: 'A red circle is left of a blue square.',
    2: 'two green triangles',
    3: 'A small, yellow star above the circle!',
    4: '',
}
REFS = {
    1: ['A red circle to the left of a blue square.', 'red circle, blue square', 'A circle left of a square'],
    2: ['Two green triangles next to each other.', 'a pair of green triangles'],
    3: ['A yellow star above a red circle.', 'The star is above the circle.', 'small yellow star on top'],
    4: ['A purple hexagon.', 'one purple hexagon in the middle'],
}


@pytest.fixture(scope='module')
def direct_scores() -> dict[str, float]:
    """pycocoevalcap called as COCOEvalCap does: tokenize references and predictions, run each scorer."""
    if shutil.which('java') is None:
        pytest.skip('pycocoevalcap needs a Java runtime')
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = PTBTokenizer().tokenize({k: [{'caption': c} for c in v] for k, v in REFS.items()})
    res = PTBTokenizer().tokenize({k: [{'caption': v}] for k, v in PREDS.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {
        'BLEU-1': bleu[0],
        'BLEU-4': bleu[3],
        'METEOR': Meteor().compute_score(gts, res)[0],
        'ROUGE-L': Rouge().compute_score(gts, res)[0],
        'CIDEr': Cider().compute_score(gts, res)[0],
    }


@needs_java
def test_caption_scores_equal_pycocoevalcap(direct_scores: dict[str, float]) -> None:
    names = ('CIDEr', 'BLEU-1', 'BLEU-4', 'METEOR', 'ROUGE-L')
    scores = caption_scores(PREDS, REFS, metrics=names)
    assert list(scores) == list(names)
    assert scores == direct_scores  # exact equality, not approximate
    assert 0 < scores['BLEU-4'] < 1 and 0 < scores['METEOR'] < 1 and scores['CIDEr'] > 0


@needs_java
def test_caption_metric_perfect_predictions_dedup_and_save(tmp_path: Path) -> None:
    refs = {k: [v[-1]] for k, v in REFS.items()}  # each has at least 4 words, so every n-gram order counts
    save_path = tmp_path / 'out' / 'captions.json'
    metric = METRICS.build(dict(type='CaptionMetric', metrics=('CIDEr',), save_path=str(save_path)))
    samples = [BaseDataElement(img_id=k, pred_caption=v[0], gt_captions=v) for k, v in refs.items()]
    repeat = BaseDataElement(img_id=1, pred_caption='a wrong caption', gt_captions=refs[1])
    metric.process({}, [s.to_dict() for s in samples[:2]])
    metric.process({}, [*samples[2:], repeat])  # the repeat comes last and is dropped
    results = metric.evaluate(len(metric.results))
    # One distinct reference per image, predicted exactly: every n-gram cosine is 1, so CIDEr-D = 10.
    assert results == {'caption/CIDEr': pytest.approx(10.0)}
    saved = json.loads(save_path.read_text())
    assert saved == [{'image_id': k, 'caption': v[0]} for k, v in refs.items()]


@needs_java
def test_constant_caption_baseline_is_best_constant() -> None:
    from pycocoevalcap.cider.cider import Cider

    # Already lower-case and without punctuation: PTB tokenization leaves these unchanged.
    refs = {
        0: ['a red circle', 'a red circle left of a square'],
        1: ['a blue square', 'a red circle above a blue square'],
        2: ['a green triangle', 'a red circle'],
        3: ['two red circles', 'a yellow star'],
    }
    caption, cider = constant_caption_baseline(refs, num_candidates=10)
    exhaustive = {
        c: Cider().compute_score(refs, {k: [c] for k in refs})[0] for caps in refs.values() for c in caps
    }
    assert cider == max(exhaustive.values())
    assert exhaustive[caption] == cider
    assert caption in {c for caps in refs.values() for c in caps}
    # With one candidate per shortlist, the most frequent reference ('a red circle', 3 times) is still tried.
    _, cider_short = constant_caption_baseline(refs, num_candidates=1)
    assert exhaustive['a red circle'] <= cider_short <= cider


def test_missing_java_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, 'which', lambda name, *args, **kwargs: None)
    with pytest.raises(RuntimeError, match='apt-get install -y default-jre-headless'):
        caption_scores({1: 'a cat'}, {1: ['a cat']})
    metric = CaptionMetric()
    metric.process({}, [{'img_id': 1, 'pred_caption': 'a cat', 'gt_captions': ['a cat']}])
    with pytest.raises(RuntimeError, match='java'):
        metric.evaluate(1)


def test_caption_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match='unknown caption metrics'):
        CaptionMetric(metrics=('SPICE',))
    with pytest.raises(ValueError, match='same ids'):
        caption_scores({1: 'a'}, {2: ['a']})
