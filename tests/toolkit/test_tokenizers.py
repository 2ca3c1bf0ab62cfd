"""Tests of toolkit.tokenizers: CLIP BPE parity with open_clip, tokenizer.json wrappers, shared interface."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from toolkit.registry import TOKENIZERS
from toolkit.tokenizers import CLIPBPETokenizer, HFTokenizer, TextTokenizer, bytes_to_unicode

CLIP_TEXTS = [
    'a photo of a cat!',
    '',
    'Hello, World!!! 123 4567 3.14159',
    'naïve café — “quotes” &amp; emoji 😀 日本語 ÀÉÎ',
    "It's we've they'll I'd, don't",
    '   spaces\t\nand\ttabs   ',
    'MiXeD CaSe with-hyphens and_underscores (brackets) [x] {y}',
    '<start_of_text> literal specials <end_of_text>',
    'x ' * 100,
    'supercalifragilisticexpialidocious' * 5,
    '&lt;b&gt;html&lt;/b&gt; ï¿½ mojibake Ã©',
]

SHAPES_VOCAB = ['<pad>', '<bos>', '<eos>', '<unk>', *'a red blue circle square left of the'.split()]
WORDPIECE_VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *'a red cir ##cle . squ ##are'.split()]


@pytest.fixture(scope='module')
def clip_tokenizer() -> CLIPBPETokenizer:
    return CLIPBPETokenizer()


@pytest.fixture(scope='module')
def word_level_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A word-level tokenizer.json like the one the Shapes World data ships."""
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SHAPES_VOCAB)}, unk_token='<unk>'))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(SHAPES_VOCAB[:4])
    path = tmp_path_factory.mktemp('word') / 'tokenizer.json'
    tokenizer.save(str(path))
    return str(path)


@pytest.fixture(scope='module')
def wordpiece_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A BERT-style WordPiece tokenizer.json; its post-processor, padding and truncation must be ignored."""
    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDPIECE_VOCAB)}, unk_token='[UNK]'))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single='[CLS] $A [SEP]', special_tokens=[('[CLS]', 2), ('[SEP]', 3)]
    )
    tokenizer.enable_padding(pad_id=0, pad_token='[PAD]', length=20)
    tokenizer.enable_truncation(max_length=3)
    tokenizer.add_special_tokens(WORDPIECE_VOCAB[:5])
    path = tmp_path_factory.mktemp('wordpiece') / 'tokenizer.json'
    tokenizer.save(str(path))
    return str(path)


# -- CLIP BPE -------------------------------------------------------------------------------------------
@pytest.mark.parametrize('context_length', [77, 16, 2])
def test_clip_ids_match_open_clip(clip_tokenizer: CLIPBPETokenizer, context_length: int) -> None:
    open_clip = pytest.importorskip('open_clip')
    expected = open_clip.tokenize(CLIP_TEXTS, context_length=context_length)
    ids = clip_tokenizer(CLIP_TEXTS, context_length=context_length)
    assert ids.dtype == torch.long and ids.shape == (len(CLIP_TEXTS), context_length)
    assert torch.equal(ids, expected)


def test_clip_layout_and_truncation(clip_tokenizer: CLIPBPETokenizer) -> None:
    assert clip_tokenizer.vocab_size == 49408
    specials = (clip_tokenizer.bos_token_id, clip_tokenizer.eos_token_id, clip_tokenizer.pad_token_id)
    assert specials == (49406, 49407, 0)
    long_ids = clip_tokenizer('word ' * 200, context_length=10)[0]
    assert long_ids[0] == 49406 and long_ids[-1] == 49407
    assert long_ids[1:-1].tolist() == clip_tokenizer.encode('word ' * 8)
    empty = clip_tokenizer('')[0]
    assert empty[:2].tolist() == [49406, 49407] and (empty[2:] == 0).all()
    assert len(bytes_to_unicode()) == 256 and len(set(bytes_to_unicode().values())) == 256


def test_clip_decode_keeps_exclamation_and_stops_at_eos(clip_tokenizer: CLIPBPETokenizer) -> None:
    text = 'wow !$ a dog , 3 cats'
    ids = clip_tokenizer(text, context_length=20)
    assert clip_tokenizer.encode('!$') == [0, 259]  # the padding id 0 is also a real token: '!'
    assert clip_tokenizer.decode(ids[0]) == text
    assert clip_tokenizer.batch_decode(clip_tokenizer(['Hello World', 'naïve café 😀'])) == [
        'hello world',
        'naïve café 😀',
    ]
    # Tokens after the first EOS (here a second sentence) are ignored; a list works as well as a tensor.
    joined = [*ids[0, : len(clip_tokenizer.encode(text)) + 2].tolist(), *clip_tokenizer.encode('ignored')]
    assert clip_tokenizer.decode(joined) == text


def test_clip_lengths_use_eos_not_padding(clip_tokenizer: CLIPBPETokenizer) -> None:
    texts = ['!$', 'a b c !$', '', 'x ' * 100]
    ids = clip_tokenizer(texts, context_length=12)
    expected = [min(len(clip_tokenizer.encode(t)) + 2, 12) for t in texts]
    assert clip_tokenizer.lengths(ids).tolist() == expected
    # A naive ``ids != pad`` count would miss the '!' (id 0) of the first row.
    assert int((ids[0] != clip_tokenizer.pad_token_id).sum()) != expected[0]
    no_eos = torch.ones(1, 5, dtype=torch.long)
    assert clip_tokenizer.lengths(no_eos).tolist() == [5]


def test_clip_missing_vocab_names_path(tmp_path: Path) -> None:
    missing = tmp_path / 'nowhere' / 'bpe.txt.gz'
    with pytest.raises(FileNotFoundError, match=str(missing)):
        CLIPBPETokenizer(vocab_path=str(missing))


def test_clip_pickles_and_builds_from_registry(clip_tokenizer: CLIPBPETokenizer) -> None:
    built = TOKENIZERS.build(dict(type='CLIPBPETokenizer', context_length=24))
    assert isinstance(built, CLIPBPETokenizer) and isinstance(built, TextTokenizer)
    assert built.context_length == 24 and built('a cat').shape == (1, 24)
    payload = pickle.dumps(built)
    assert len(payload) < 1000  # only the constructor arguments travel to dataloader workers
    restored = pickle.loads(payload)
    assert restored.context_length == 24
    assert torch.equal(restored(CLIP_TEXTS), built(CLIP_TEXTS))


def test_context_length_must_hold_specials(clip_tokenizer: CLIPBPETokenizer) -> None:
    with pytest.raises(ValueError, match='context_length'):
        clip_tokenizer('a', context_length=1)


# -- tokenizer.json ------------------------------------------------------------------------------------
def test_word_level_tokenizer(word_level_path: str) -> None:
    tokenizer = HFTokenizer(path=word_level_path, context_length=8, lowercase=True)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    assert tokenizer.vocab_size == len(SHAPES_VOCAB)
    ids = tokenizer(['A red circle left of the blue square', 'a green square', ''])
    assert ids.tolist() == [
        [1, 4, 5, 7, 9, 10, 11, 2],  # truncated to 6 words, EOS kept last
        [1, 4, 3, 8, 2, 0, 0, 0],  # 'green' is unknown
        [1, 2, 0, 0, 0, 0, 0, 0],
    ]
    assert tokenizer.lengths(ids).tolist() == [8, 5, 2]
    assert tokenizer.batch_decode(ids) == ['a red circle left of the', 'a <unk> square', '']
    assert tokenizer.encode('red square') == [5, 8]
    # Without lower-casing the capitalised word is unknown to this vocabulary.
    assert HFTokenizer(path=word_level_path).encode('Red') == [3]


def test_wordpiece_tokenizer_ignores_file_post_processing(wordpiece_path: str) -> None:
    tokenizer = TOKENIZERS.build(dict(type='HFTokenizer', path=wordpiece_path, context_length=7))
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (2, 3, 0)
    # The file truncates to 3 tokens, pads to 20 and adds [CLS]/[SEP]: none of that may happen here.
    assert tokenizer.encode('A red Circle.') == [5, 6, 7, 8, 9]
    ids = tokenizer(['A red Circle.', 'red square a red circle', 'zzz'])
    assert ids.tolist() == [
        [2, 5, 6, 7, 8, 9, 3],
        [2, 6, 10, 11, 5, 6, 3],
        [2, 1, 3, 0, 0, 0, 0],
    ]
    assert tokenizer.batch_decode(ids) == ['a red circle.', 'red square a red', '[UNK]']
    assert tokenizer.lengths(ids).tolist() == [7, 7, 3]
    assert tokenizer(['a'], context_length=4).tolist() == [[2, 5, 3, 0]]


def test_explicit_and_missing_special_tokens(wordpiece_path: str, word_level_path: str) -> None:
    tokenizer = HFTokenizer(path=wordpiece_path, bos_token='[MASK]', eos_token='[SEP]', pad_token='[UNK]')
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (4, 3, 1)
    with pytest.raises(ValueError, match='<s>'):
        HFTokenizer(path=wordpiece_path, bos_token='<s>')
    with pytest.raises(FileNotFoundError, match='missing.json'):
        HFTokenizer(path=word_level_path.replace('tokenizer.json', 'missing.json'))


def test_hf_tokenizer_pickles(wordpiece_path: str) -> None:
    tokenizer = HFTokenizer(path=wordpiece_path, context_length=6)
    restored = pickle.loads(pickle.dumps(tokenizer))
    texts = ['a red circle', 'square']
    assert torch.equal(restored(texts), tokenizer(texts))
    assert restored.context_length == 6


def test_hf_encode_with_offsets_spans_the_input(wordpiece_path: str, word_level_path: str) -> None:
    tokenizer = HFTokenizer(path=wordpiece_path)
    text = 'A red Circle.'
    ids, spans = tokenizer.encode_with_offsets(text)
    assert ids == tokenizer.encode(text)
    assert [text[a:b] for a, b in spans] == ['A', 'red', 'Cir', 'cle', '.']  # sub-words split the word
    # Lower-casing that changes lengths ('İ' becomes two characters) maps the spans back onto the input.
    words = HFTokenizer(path=word_level_path, lowercase=True)
    text = 'İ red  Circle'
    ids, spans = words.encode_with_offsets(text)
    assert ids == words.encode(text) == [3, 5, 7]
    assert [text[a:b] for a, b in spans] == ['İ', 'red', 'Circle']


def test_pad_id_rows_pads_right_and_masks_the_padding() -> None:
    from toolkit.tokenizers import pad_id_rows

    ids, mask = pad_id_rows([torch.tensor([5, 6, 7]), torch.tensor([[8]]), torch.tensor([9, 10])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
