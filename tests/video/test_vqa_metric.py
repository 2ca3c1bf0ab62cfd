"""Tests of the open-ended video QA accuracy (video.evaluation.vqa)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from mmengine.logging import MMLogger
from mmengine.structures import BaseDataElement

from toolkit.registry import METRICS
from video.evaluation.vqa import CONTRACTIONS, VideoQAMetric, normalize_answer, vqa_accuracy


@pytest.mark.parametrize(
    ('text', 'expected'),
    [
        # case and surrounding white space
        ('  Dog ', 'dog'),
        ('TWO\tCats\n', '2 cats'),
        # articles go, wherever they are
        ('a dog', 'dog'),
        ('An Apple', 'apple'),
        ('the man on the left', 'man on left'),
        ('theater', 'theater'),  # only whole words
        # number words become digits (zero ... ten, and none as in VQA)
        ('three', '3'),
        ('ten', '10'),
        ('none', '0'),
        ('eleven', 'eleven'),
        ('one of the two', '1 of 2'),
        # punctuation next to a space is deleted, elsewhere it becomes a space
        ('yes!', 'yes'),
        ('what?', 'what'),
        ('yes, sir', 'yes sir'),
        ('red-blue', 'red blue'),
        ('black / white', 'black white'),
        ('(ten) dogs', '10 dogs'),
        # a comma between digits deletes every mark: thousands stay one number
        ('1,000', '1000'),
        ('1,000-2', '10002'),
        # periods: deleted unless a digit follows, so decimals survive
        ('dog.', 'dog'),
        ('3.5', '3.5'),
        ('U.S.A.', 'usa'),
        # apostrophes are kept; contractions spelt without them are restored
        ("don't", "don't"),
        ('dont', "don't"),
        ('its', 'its'),  # an English word: left alone
        ('well', 'well'),
        ('im', "i'm"),
        ('', ''),
        ('  .  ', ''),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_normalize_answer_is_idempotent_and_checks_type() -> None:
    for text in ['The Two Dogs!', 'U.S.A.', '1,000 (approx.)', "couldnt've", 'a-b c']:
        once = normalize_answer(text)
        assert normalize_answer(once) == once
    with pytest.raises(TypeError, match='expects a str'):
        normalize_answer(3)  # type: ignore[arg-type]


def test_contraction_table() -> None:
    assert (
        CONTRACTIONS['couldntve'] == CONTRACTIONS["couldn'tve"] == CONTRACTIONS["couldnt've"] == "couldn't've"
    )
    assert CONTRACTIONS['whats'] == "what's"
    assert all("'" in value for value in CONTRACTIONS.values())
    assert not {'its', 'well', 'hell', 'shell', 'lets', 'were', 'ill'} & set(CONTRACTIONS)


def test_vqa_accuracy() -> None:
    gts = {1: 'two', 2: 'dog', 3: 'The Man', 4: 'cooking'}
    preds = {1: '2', 2: 'a dog.', 3: 'woman', 4: 'cook'}
    assert vqa_accuracy(preds, gts) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match=r'missing preds \[4\]'):
        vqa_accuracy({k: v for k, v in preds.items() if k != 4}, gts)
    with pytest.raises(ValueError, match='no questions'):
        vqa_accuracy({}, {})


# question_id, question, question_type, gt, pred, correct after normalisation
QUESTIONS = [
    (10, 'what is the man doing?', 0, 'cooking', 'Cooking.', True),
    (11, 'what is a woman holding?', 0, 'phone', 'cup', False),
    (12, 'who is talking?', 1, 'man', 'the man', True),
    (13, 'who is singing?', 1, 'woman', 'girl', False),
    (14, 'how many people dance?', 2, '2', 'two', True),
    (15, 'Which way does the car turn?', 3, 'left', 'left', True),
    (16, 'which way does the dog run?', 3, 'right', 'left', False),
]


def _samples(as_element: bool = False) -> list:
    samples = []
    for qid, question, qtype, gt, pred, _ in QUESTIONS:
        fields = dict(question_id=qid, question=question, question_type=qtype, gt_answer=gt, pred_answer=pred)
        samples.append(BaseDataElement(**fields) if as_element else fields)
    return samples


def test_metric_known_values_types_and_groups(tmp_path: Path) -> None:
    save = tmp_path / 'sub' / 'preds.json'
    metric = METRICS.build(
        dict(type='VideoQAMetric', groups=dict(motion=r'^which way does', who=r'^who\b'), save_path=str(save))
    )
    assert isinstance(metric, VideoQAMetric)
    samples = _samples()
    metric.process({}, samples[:4])
    metric.process({}, [BaseDataElement(**s) for s in samples[4:]])
    out = metric.evaluate(size=len(samples))
    # Correct: 10, 12, 14, 15 -> 4 of 7.
    assert out['vqa/accuracy'] == pytest.approx(4 / 7)
    assert out['vqa/num_questions'] == 7
    # Types: 0 -> 1/2, 1 -> 1/2, 2 -> 1/1, 3 -> 1/2.
    assert out['vqa/accuracy_type0'] == pytest.approx(0.5)
    assert out['vqa/accuracy_type1'] == pytest.approx(0.5)
    assert out['vqa/accuracy_type2'] == pytest.approx(1.0)
    assert out['vqa/accuracy_type3'] == pytest.approx(0.5)
    # Groups: motion matches 15 (case-insensitive) and 16 -> 1/2; who matches 12 and 13 -> 1/2.
    assert out['vqa/num_motion'] == 2 and out['vqa/accuracy_motion'] == pytest.approx(0.5)
    assert out['vqa/num_who'] == 2 and out['vqa/accuracy_who'] == pytest.approx(0.5)

    saved = json.loads(save.read_text())
    assert [row['question_id'] for row in saved] == [q[0] for q in QUESTIONS]
    for row, (qid, question, _, gt, pred, correct) in zip(saved, QUESTIONS, strict=True):
        assert row == dict(question_id=qid, question=question, pred=pred, gt=gt, correct=correct)


def test_metric_deduplicates_repeated_questions() -> None:
    metric = VideoQAMetric()
    samples = _samples()
    # A distributed sampler pads with repeats: 13 (wrong) three times, 10 (right) twice.
    metric.process({}, samples + [samples[3], samples[3], samples[0]])
    out = metric.evaluate(size=10)
    assert out['vqa/num_questions'] == 7
    assert out['vqa/accuracy'] == pytest.approx(4 / 7)


def test_metric_conflicting_ids_are_an_error() -> None:
    metric = VideoQAMetric()
    first = _samples()[0]
    metric.process({}, [first, {**first, 'gt_answer': 'eating'}])
    with pytest.raises(ValueError, match='question id 10 is used by two different questions'):
        metric.evaluate(size=2)


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_metric_without_question_type_and_empty_group() -> None:
    metric = VideoQAMetric(groups=dict(count=r'^how many', color=r'what colou?r'), prefix='msrvtt_qa')
    samples = [{k: v for k, v in s.items() if k != 'question_type'} for s in _samples()]
    samples[0]['question_type'] = -1  # the data set's "no category"
    samples[1]['question_type'] = None
    metric.process({}, samples)
    logger, handler = MMLogger.get_current_instance(), _ListHandler()
    logger.addHandler(handler)
    try:
        out = metric.evaluate(size=len(samples))
    finally:
        logger.removeHandler(handler)
    assert not any('accuracy_type' in key for key in out)
    assert out['msrvtt_qa/num_count'] == 1 and out['msrvtt_qa/accuracy_count'] == pytest.approx(1.0)
    assert out['msrvtt_qa/num_color'] == 0 and 'msrvtt_qa/accuracy_color' not in out
    warnings = [m for m in handler.messages if "group 'color'" in m]
    assert len(warnings) == 1 and 'matches none of the 7 questions' in warnings[0]


@pytest.mark.parametrize('field', ['pred_answer', 'gt_answer', 'question_id', 'question'])
def test_metric_missing_field_is_named(field: str) -> None:
    sample = {k: v for k, v in _samples()[0].items() if k != field}
    with pytest.raises(KeyError, match=f'no field {field!r}'):
        VideoQAMetric().process({}, [sample])
    with pytest.raises(KeyError, match=f'no field {field!r}'):
        VideoQAMetric().process({}, [BaseDataElement(**sample)])


def test_metric_rejects_bad_groups_and_empty_results() -> None:
    with pytest.raises(ValueError, match="group 'bad' has an invalid regex"):
        VideoQAMetric(groups=dict(bad='(unclosed'))
    with pytest.raises(ValueError, match='must be letters'):
        VideoQAMetric(groups={'two words': 'x'})
    with pytest.raises(ValueError, match='no predictions'):
        VideoQAMetric().compute_metrics([])


def test_grouped_questions_of_a_clip_all_count_through_evaluate() -> None:
    """A clip with all its questions is one data sample: every question counts, also after mmengine keeps
    only the first ``len(dataset)`` results (the padding of distributed samplers)."""
    metric = VideoQAMetric(groups=dict(motion=r'^which way'))
    clips = [
        dict(
            question=['what shape moves?', 'which way does the red circle move?'],
            gt_answer=['circle', 'left'],
            pred_answer=['circle', 'right'],
            question_id=[1, 2],
            question_type=[0, 2],
        ),
        dict(
            question=['what colour is it?'],
            gt_answer=['red'],
            pred_answer=['Red.'],
            question_id=[3],
            question_type=[0],
        ),  # fmt: skip
    ]
    metric.process({}, clips)
    out = metric.evaluate(size=len(clips))
    assert out['vqa/num_questions'] == 3 and out['vqa/accuracy'] == pytest.approx(2 / 3)
    assert out['vqa/accuracy_motion'] == 0.0 and out['vqa/num_motion'] == 1
    bad = dict(clips[0], pred_answer=['circle'])
    with pytest.raises(ValueError, match='lengths'):
        metric.process({}, [bad])
