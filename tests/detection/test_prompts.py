"""Detection prompts: captions, token-span positive maps (word-level and sub-word tokenizers), chunking, and
the training-prompt transform (names re-ordered and sampled, labels following their names)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mmdet.structures.bbox import HorizontalBoxes
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from detection.datasets.transforms import SampleGroundingNames
from detection.models.prompts import build_caption, chunk_names, collate_prompts, encode_prompt
from detection.vocabulary import clean_name, split_caption
from toolkit.tokenizers import HFTokenizer

REPO = Path(__file__).resolve().parents[2]
SHAPES_TOKENIZER = str(REPO / 'configs/_base_/tokenizers/shapes_world.json')
NAMES = ('red circle', 'blue square', 'green star', 'white cross', 'black hexagon')


@pytest.fixture(scope='module')
def shapes_tokenizer() -> HFTokenizer:
    return HFTokenizer(path=SHAPES_TOKENIZER, context_length=64)


@pytest.fixture(scope='module')
def wordpiece_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> HFTokenizer:
    """Sub-words: 'circle' is 'cir ##cle', 'aerosol' is 'aero ##sol'; '##' pieces have their own offsets."""
    vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', *'a red cir ##cle . aero ##sol can blue square'.split()]
    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token='[UNK]'))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    path = tmp_path_factory.mktemp('wp') / 'tokenizer.json'
    tokenizer.save(str(path))
    return HFTokenizer(path=str(path), context_length=32)


def test_caption_spans_and_cleaning() -> None:
    caption, spans = build_caption(['red circle', 'blue square', 'star'])
    assert caption == 'red circle. blue square. star.'
    assert [caption[a:b] for a, b in spans] == ['red circle', 'blue square', 'star']
    assert clean_name('aerosol_can') == 'aerosol can'
    assert clean_name('bow_(weapon)') == 'bow'
    assert split_caption('red circle. blue square.') == ('red circle', 'blue square')


def test_positive_map_spans_exactly_each_names_tokens(shapes_tokenizer: HFTokenizer) -> None:
    prompt = encode_prompt(shapes_tokenizer, NAMES)
    ids = prompt.input_ids.tolist()
    assert ids[0] == shapes_tokenizer.bos_token_id and ids[-1] == shapes_tokenizer.eos_token_id
    dot = shapes_tokenizer.encode('.')[0]
    assert ids.count(dot) == len(NAMES)  # one mark after each name
    for row, name in zip(prompt.positive_map, NAMES, strict=True):
        tokens = [ids[j] for j in torch.nonzero(row).flatten().tolist()]
        assert tokens == shapes_tokenizer.encode(name)  # exactly the name's tokens, in order
        positions = torch.nonzero(row).flatten()
        assert (positions.diff() == 1).all()  # contiguous
    # every token but BOS, EOS and the marks belongs to exactly one name
    owned = prompt.positive_map.sum(dim=0)
    marks = torch.tensor(
        [i in (dot, shapes_tokenizer.bos_token_id, shapes_tokenizer.eos_token_id) for i in ids]
    )
    assert torch.equal(owned, (~marks).long())


def test_positive_map_covers_sub_words(wordpiece_tokenizer: HFTokenizer) -> None:
    prompt = encode_prompt(wordpiece_tokenizer, ['red circle', 'aerosol_can', 'blue square'])
    assert prompt.caption == 'red circle. aerosol can. blue square.'
    vocab = {v: k for k, v in wordpiece_tokenizer._tokenizer.get_vocab().items()}
    spelled = [
        [vocab[prompt.input_ids[j].item()] for j in torch.nonzero(row).flatten().tolist()]
        for row in prompt.positive_map
    ]
    assert spelled == [['red', 'cir', '##cle'], ['aero', '##sol', 'can'], ['blue', 'square']]


def test_prompt_errors_name_the_problem(shapes_tokenizer: HFTokenizer) -> None:
    with pytest.raises(ValueError, match='chunks'):
        encode_prompt(shapes_tokenizer, NAMES * 8, max_length=20)
    with pytest.raises(ValueError, match='empty'):
        encode_prompt(shapes_tokenizer, ['red circle', '(x)'])
    with pytest.raises(ValueError, match='at least one'):
        encode_prompt(shapes_tokenizer, [])


def test_collate_pads_ids_masks_and_maps(shapes_tokenizer: HFTokenizer) -> None:
    long, short = encode_prompt(shapes_tokenizer, NAMES), encode_prompt(shapes_tokenizer, NAMES[:2])
    ids, mask, maps = collate_prompts([long, short], shapes_tokenizer.pad_token_id)
    assert ids.shape == mask.shape == (2, len(long.input_ids))
    assert mask[1].sum() == len(short.input_ids) and (ids[1, ~mask[1]] == shapes_tokenizer.pad_token_id).all()
    assert maps[1].shape == (2, ids.shape[1]) and not maps[1][:, len(short.input_ids) :].any()


def test_chunks_cover_the_vocabulary_in_order() -> None:
    assert chunk_names(range(7), 3) == [range(0, 3), range(3, 6), range(6, 7)]
    assert chunk_names(range(7), -1) == chunk_names(range(7), 7) == [range(0, 7)]
    assert [i for part in chunk_names(range(1203), 40) for i in part] == list(range(1203))


def _results(labels: list[int], vocabulary: tuple[str, ...]) -> dict:
    n = len(labels)
    return dict(
        text=vocabulary,
        gt_bboxes=HorizontalBoxes(torch.arange(4 * n, dtype=torch.float32).reshape(n, 4)),
        gt_bboxes_labels=np.array(labels, dtype=np.int64),
        gt_ignore_flags=np.zeros(n, dtype=bool),
    )


def test_sample_names_shuffles_and_labels_follow_their_names() -> None:
    np.random.seed(0)
    transform = SampleGroundingNames(shuffle=True)
    orders = set()
    for _ in range(5):
        out = transform(_results([1, 3, 1], NAMES))
        assert sorted(out['text']) == sorted(NAMES)
        assert [out['text'][i] for i in out['gt_bboxes_labels']] == [
            'blue square',
            'white cross',
            'blue square',
        ]
        orders.add(out['text'])
    assert len(orders) > 1


def test_sample_names_keeps_positives_and_respects_the_budgets(shapes_tokenizer: HFTokenizer) -> None:
    np.random.seed(1)
    out = SampleGroundingNames(max_names=3)(_results([4, 0], NAMES))
    assert len(out['text']) == 3 and {'black hexagon', 'red circle'} <= set(out['text'])
    # 2 + 3 tokens per name ('blue square .'): 8 tokens fit two names; the third positive loses its box.
    tokenizer = dict(type='HFTokenizer', path=SHAPES_TOKENIZER)
    out = SampleGroundingNames(max_tokens=8, tokenizer=tokenizer)(_results([0, 1, 2, 1], NAMES))
    assert len(out['text']) == 2 and len(out['gt_bboxes']) == len(out['gt_bboxes_labels'])
    kept = [out['text'][i] for i in out['gt_bboxes_labels']]
    assert set(kept) == set(out['text']) and len(kept) in (2, 3)
    assert len(encode_prompt(shapes_tokenizer, out['text']).input_ids) <= 8
