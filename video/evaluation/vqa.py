"""Open-ended video question answering accuracy, as reported on MSRVTT-QA (Xu et al., ACM MM 2017).

MSRVTT-QA and MSVD-QA have one ground-truth answer per question; a prediction counts as correct when it equals
the answer after both are normalised by :func:`normalize_answer`, which follows the answer processing of the
VQA v2 evaluation script (Antol et al., ICCV 2015; Goyal et al., CVPR 2017: ``processPunctuation`` and
``processDigitArticle``) that video-QA code bases inherit. Accuracy is a fraction in [0, 1] (papers print it
multiplied by 100).

What differs from the VQA v2 script: there is one reference answer, so the score is exact match, not
``min(#humans agreeing / 3, 1)``; the contraction table is written here (see :data:`CONTRACTIONS`), and its
``im`` / ``ive`` entries fire (the VQA table has the keys ``Im`` / ``Ive`` but looks up lower-cased words, so
they never match there); every period is considered (the VQA script passes ``re.UNICODE`` as the ``count``
of ``re.sub`` and so stops after 32); both the prediction and the answer are always normalised.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from itertools import product
from typing import Any

from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from toolkit.evaluation import get_sample_field, has_sample_field
from toolkit.registry import METRICS

__all__ = ['CONTRACTIONS', 'NUMBER_WORDS', 'PUNCTUATION', 'VideoQAMetric', 'normalize_answer', 'vqa_accuracy']

# Marks that are deleted or turned into spaces (the VQA v2 list). Apostrophes, colons, periods (handled on
# their own), ``%``, ``#``, ``$``, ``&``, ``*``, ``|``, ``^`` and ``~`` are not in it and are kept.
PUNCTUATION = (';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
               '?', '!')  # fmt: skip
# Number words become digits; ``none`` counts as zero, as in the VQA v2 script (counting questions).
NUMBER_WORDS = {
    'none': '0',
    'zero': '0',
    'one': '1',
    'two': '2',
    'three': '3',
    'four': '4',
    'five': '5',
    'six': '6',
    'seven': '7',
    'eight': '8',
    'nine': '9',
    'ten': '10',
}
ARTICLES = frozenset({'a', 'an', 'the'})

# Canonical contractions; every spelling with one or more of their apostrophes left out maps back to them.
# As in the VQA table, those whose apostrophe-free form is an English word (it's, i'll, i'd, he'll, she'll,
# she'd, we'd, we'll, we're) are not listed, and ``lets`` (let's) is not rewritten; ``cant`` and ``wont`` are.
_CANONICAL_CONTRACTIONS = (
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't", "don't",
    "hadn't", "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he's", "how'd", "how'll", "how's",
    "i'd've", "i'm", "i've", "isn't", "it'd", "it'd've", "it'll", "let's", "ma'am", "mightn't",
    "mightn't've", "might've", "mustn't", "must've", "needn't", "not've", "o'clock", "oughtn't", "shan't",
    "she'd've", "she's", "should've", "shouldn't", "shouldn't've", "somebody'd", "somebody'd've",
    "somebody'll", "somebody's", "someone'd", "someone'd've", "someone'll", "someone's", "something'd",
    "something'd've", "something'll", "that's", "there'd", "there'd've", "there're", "there's", "they'd",
    "they'd've", "they'll", "they're", "they've", "'twas", "wasn't", "we'd've", "we've", "weren't",
    "what'll", "what're", "what's", "what've", "when's", "where'd", "where's", "where've", "who'd",
    "who'd've", "who'll", "who's", "who've", "why'll", "why're", "why's", "won't", "would've", "wouldn't",
    "wouldn't've", "y'all", "y'all'll", "y'all'd've", "you'd", "you'd've", "you'll", "you're", "you've",
)  # fmt: skip
_ENGLISH_WORDS = frozenset({'lets'})


def _contraction_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for canonical in _CANONICAL_CONTRACTIONS:
        parts = canonical.split("'")
        for keep in product((True, False), repeat=len(parts) - 1):
            if all(keep):
                continue  # the canonical spelling itself
            spelling = parts[0] + ''.join(
                ("'" if k else '') + p for k, p in zip(keep, parts[1:], strict=True)
            )
            if spelling not in _ENGLISH_WORDS:
                table.setdefault(spelling, canonical)
    return table


# Spelling without (some) apostrophes -> canonical contraction, e.g. ``dont`` -> ``don't``.
CONTRACTIONS: dict[str, str] = _contraction_table()
_DIGIT_COMMA_DIGIT = re.compile(r'\d,\d')
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r'\.(?!\d)')


def normalize_answer(text: str) -> str:
    """Normalise an open-ended answer as the VQA v2 evaluation does, so that exact match is fair.

    Exactly what is done, in order:

    1. newlines and tabs become spaces; the text is lower-cased and stripped;
    2. each mark of :data:`PUNCTUATION` is deleted everywhere when, in the text of step 1, it touches a
       space (``'x '`` or ``' x'`` occurs) or the text holds a comma between two digits (``1,000``);
       otherwise each occurrence becomes a space (``red-blue`` -> ``red blue``);
    3. every period not followed by a digit is deleted (``dog.`` -> ``dog``, ``3.5`` is kept);
    4. the text is split on white space; number words ``zero`` ... ``ten`` (and ``none``) become digits
       (:data:`NUMBER_WORDS`); the articles ``a``, ``an``, ``the`` are dropped; words spelt without their
       apostrophes become the contraction (:data:`CONTRACTIONS`, ``dont`` -> ``don't``);
    5. the words are joined with single spaces.

    Examples: ``'The Dog.'`` -> ``'dog'``, ``'Two!'`` -> ``'2'``, ``'1,000'`` -> ``'1000'``,
    ``'an apple'`` -> ``'apple'``.
    """
    if not isinstance(text, str):
        raise TypeError(f'normalize_answer expects a str, got {type(text).__name__}')
    text = text.replace('\n', ' ').replace('\t', ' ').lower().strip()
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if mark not in out:
            continue
        if delete_all or f'{mark} ' in text or f' {mark}' in text:
            out = out.replace(mark, '')
        else:
            out = out.replace(mark, ' ')
    out = _PERIOD_NOT_BEFORE_DIGIT.sub('', out)
    words = []
    for word in out.split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return ' '.join(words)


def vqa_accuracy(preds: Mapping[int, str], gts: Mapping[int, str]) -> float:
    """Fraction of questions whose prediction equals the answer after :func:`normalize_answer`.

    Args:
        preds: ``{question_id: predicted answer}``.
        gts: ``{question_id: ground-truth answer}`` with the same ids.
    """
    if set(preds) != set(gts):
        missing, extra = sorted(set(gts) - set(preds))[:5], sorted(set(preds) - set(gts))[:5]
        raise ValueError(
            f'preds and gts must have the same question ids (missing preds {missing}, extra {extra})'
        )
    if not gts:
        raise ValueError('vqa_accuracy received no questions')
    correct = sum(normalize_answer(preds[k]) == normalize_answer(gts[k]) for k in gts)
    return correct / len(gts)


@METRICS.register_module()
class VideoQAMetric(BaseMetric):
    """Exact-match accuracy of open-ended answers after :func:`normalize_answer`, overall and by subset.

    Reads from each predicted data sample (a dict or a :class:`BaseDataElement`): ``pred_answer`` (str),
    ``gt_answer`` (str), ``question_id`` (int), ``question`` (str) and, when present, ``question_type`` (int;
    a negative type, e.g. the ``-1`` of a data set without categories, counts as none).
    Samples repeated by a distributed sampler (same ``question_id``) count once; two different questions or
    answers under one id are an error.

    Reported keys (fractions in [0, 1]): ``accuracy``, ``num_questions``, ``accuracy_type{K}`` for every
    question type K seen, and for every group ``accuracy_{name}`` and ``num_{name}``. A group that matches no
    question reports ``num_{name} = 0``, no accuracy, and logs a warning.

    Args:
        groups: ``{name: regex}``; a question is in the group when ``re.search(regex, question)`` finds a
            match, case-insensitively, e.g. ``dict(motion=r'^which way does')``.
        save_path: when given, the predictions are written there as a JSON list of ``{"question_id",
            "question", "pred", "gt", "correct"}`` (``pred`` and ``gt`` as given, ``correct`` after
            normalisation).
        prefix: prefix of the reported keys (``vqa/accuracy``...).
        collect_device: ``'cpu'`` or ``'gpu'``, where ranks gather results (see mmengine ``BaseMetric``).
    """

    default_prefix = 'vqa'

    def __init__(
        self,
        *,
        groups: dict[str, str] | None = None,
        save_path: str | None = None,
        prefix: str = 'vqa',
        collect_device: str = 'cpu',
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.groups: dict[str, re.Pattern[str]] = {}
        for name, pattern in (groups or {}).items():
            if not re.fullmatch(r'\w+', name):
                raise ValueError(f'VideoQAMetric: group name {name!r} must be letters, digits or _')
            try:
                self.groups[name] = re.compile(pattern, re.IGNORECASE)
            except re.error as err:
                raise ValueError(
                    f'VideoQAMetric: group {name!r} has an invalid regex {pattern!r}: {err}'
                ) from None
        self.save_path = save_path

    def process(self, data_batch: Any, data_samples: Sequence[Any]) -> None:
        for sample in data_samples:
            fields = {
                'question_id': get_sample_field(sample, 'question_id'),
                'question': get_sample_field(sample, 'question'),
                'pred': get_sample_field(sample, 'pred_answer'),
                'gt': get_sample_field(sample, 'gt_answer'),
            }
            qtypes = (
                get_sample_field(sample, 'question_type')
                if has_sample_field(sample, 'question_type')
                else None
            )
            grouped = isinstance(fields['question'], list | tuple)  # a clip with all its questions
            if grouped:
                sizes = {key: len(value) for key, value in fields.items()}
                if len(set(sizes.values())) != 1 or (qtypes is not None and len(qtypes) != sizes['question']):
                    raise ValueError(
                        f'VideoQAMetric: a sample with a list of questions has fields of lengths {sizes}'
                    )
            else:
                fields = {key: [value] for key, value in fields.items()}
                qtypes = None if qtypes is None else [qtypes]
            # One result per data sample: mmengine keeps the first len(dataset) results (dropping the
            # padding of distributed samplers), so a clip's questions must stay together.
            self.results.append(
                [
                    {
                        'question_id': int(fields['question_id'][index]),
                        'question': str(fields['question'][index]),
                        'pred': str(fields['pred'][index]),
                        'gt': str(fields['gt'][index]),
                        'question_type': None if qtype is None or qtype < 0 else qtype,  # -1: untyped
                    }
                    for index, qtype in enumerate(
                        [None] * len(fields['question']) if qtypes is None else [int(t) for t in qtypes]
                    )
                ]
            )

    def compute_metrics(self, results: list[list[dict[str, Any]]]) -> dict[str, float | int]:
        unique: dict[int, dict[str, Any]] = {}
        for result in (question for sample in results for question in sample):
            first = unique.setdefault(result['question_id'], result)  # keep the first copy of a repeat
            if (first['question'], first['gt']) != (result['question'], result['gt']):
                raise ValueError(
                    f'VideoQAMetric: question id {result["question_id"]} is used by two different '
                    f'questions ({first["question"]!r} -> {first["gt"]!r} and {result["question"]!r} -> '
                    f'{result["gt"]!r})'
                )
        if not unique:
            raise ValueError('VideoQAMetric received no predictions')
        for item in unique.values():
            item['correct'] = normalize_answer(item['pred']) == normalize_answer(item['gt'])
        if self.save_path is not None:
            self._save(list(unique.values()))

        items = list(unique.values())
        metrics: dict[str, float | int] = {
            'accuracy': _mean_correct(items),
            'num_questions': len(items),
        }
        types = sorted({item['question_type'] for item in items if item['question_type'] is not None})
        for qtype in types:
            metrics[f'accuracy_type{qtype}'] = _mean_correct(
                [i for i in items if i['question_type'] == qtype]
            )
        for name, pattern in self.groups.items():
            members = [item for item in items if pattern.search(item['question'])]
            metrics[f'num_{name}'] = len(members)
            if members:
                metrics[f'accuracy_{name}'] = _mean_correct(members)
            else:
                print_log(
                    f'VideoQAMetric: group {name!r} ({pattern.pattern!r}) matches none of the {len(items)} '
                    'questions; its accuracy is not reported',
                    logger='current',
                    level=logging.WARNING,
                )
        return metrics

    def _save(self, items: list[dict[str, Any]]) -> None:
        assert self.save_path is not None
        directory = os.path.dirname(os.path.abspath(self.save_path))
        os.makedirs(directory, exist_ok=True)
        keys = ('question_id', 'question', 'pred', 'gt', 'correct')
        with open(self.save_path, 'w', encoding='utf-8') as handle:
            json.dump([{key: item[key] for key in keys} for item in items], handle, indent=1)


def _mean_correct(items: Sequence[Mapping[str, Any]]) -> float:
    return sum(bool(item['correct']) for item in items) / len(items)
