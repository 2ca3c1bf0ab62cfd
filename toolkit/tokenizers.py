"""Offline text tokenizers with one interface: ``[bos] tokens [eos] pad...`` id tensors.

Two implementations, registered in :data:`toolkit.registry.TOKENIZERS`:

* :class:`CLIPBPETokenizer`, the byte-level BPE of CLIP (Radford et al., 2021, Sec. 2.4: "a lower-cased
  byte pair encoding (BPE) representation of the text with a 49,152 vocab size ... bracketed with [SOS] and
  [EOS] tokens"). It reads the merges file that open_clip ships in its package and produces the same ids as
  ``open_clip.tokenize`` (same cleaning, pre-tokenisation regex, truncation that keeps the end token last).
  Like open_clip, a literal ``<start_of_text>``/``<end_of_text>`` inside a text maps to the special id.
* :class:`HFTokenizer`, any local ``tokenizer.json`` of the HuggingFace ``tokenizers`` library (word-level,
  WordPiece, BPE...). Its own post-processor, padding and truncation are bypassed: we add BOS/EOS, truncate
  and pad ourselves so that both tokenizers lay sequences out identically.

What differs from the references: a single interface (``__call__``, ``encode``, ``decode``,
``batch_decode``, ``lengths`` and the special-token properties); ``lengths`` counts up to the first end
token, because CLIP pads with id 0 which is also the id of ``!``. Nothing is downloaded; both tokenizers
pickle as their constructor arguments (dataloader workers rebuild them).
"""

from __future__ import annotations

import abc
import functools
import gzip
import html
import importlib.util
import os
from collections.abc import Callable, Sequence
from typing import Any

import regex
import torch
from tokenizers import Tokenizer

from toolkit.registry import TOKENIZERS

try:  # ftfy repairs mojibake as open_clip does; optional, but ids match open_clip only with it installed.
    import ftfy
except ImportError:  # pragma: no cover - depends on the environment
    ftfy = None  # type: ignore[assignment]

__all__ = ['CLIPBPETokenizer', 'HFTokenizer', 'TextTokenizer', 'bytes_to_unicode', 'default_clip_vocab_path']

CLIP_VOCAB_FILE = 'bpe_simple_vocab_16e6.txt.gz'
# CLIP keeps the first 49152 - 256 - 2 merges of the file (its first line is a version header).
_NUM_CLIP_MERGES = 49152 - 256 - 2
_CLIP_SPECIALS = ('<start_of_text>', '<end_of_text>')
# Contractions, runs of letters, single digits, runs of other non-space symbols.
_CLIP_WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_END_OF_WORD = '</w>'


def pad_id_rows(rows: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpadded id sequences -> ``txt_ids`` (P, L) right-padded with ``pad_id`` and ``txt_mask`` (P, L) bool,
    L the longest row."""
    flat = [row.reshape(-1) for row in rows]
    txt_ids = torch.full((len(flat), max((len(row) for row in flat), default=0)), pad_id, dtype=torch.long)
    txt_mask = torch.zeros(txt_ids.shape, dtype=torch.bool)
    for index, row in enumerate(flat):
        txt_ids[index, : len(row)] = row
        txt_mask[index, : len(row)] = True
    return txt_ids, txt_mask


class TextTokenizer(abc.ABC):
    """Common interface: texts to ``(B, L)`` id tensors laid out as ``[bos] tokens [eos] pad...``.

    Subclasses implement :meth:`encode` (text to ids without specials), :meth:`_decode_tokens` (ids without
    specials to text), :attr:`vocab_size` and set ``_bos_id``, ``_eos_id``, ``_pad_id`` and
    ``_context_length``. Pickling stores only the constructor arguments kept in ``_init_kwargs``.
    """

    _bos_id: int
    _eos_id: int
    _pad_id: int
    _context_length: int
    _init_kwargs: dict[str, Any]

    # -- to implement -------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS/EOS, untruncated."""

    @abc.abstractmethod
    def _decode_tokens(self, ids: list[int]) -> str:
        """Text of ids that hold no BOS, EOS or padding."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""

    @property
    def _pad_is_dedicated(self) -> bool:
        """Whether the padding id is only padding (CLIP's id 0 is also ``!``)."""
        return True

    # -- shared behaviour ---------------------------------------------------------------------------
    @property
    def bos_token_id(self) -> int:
        return self._bos_id

    @property
    def eos_token_id(self) -> int:
        return self._eos_id

    @property
    def pad_token_id(self) -> int:
        return self._pad_id

    @property
    def context_length(self) -> int:
        return self._context_length

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Tokenize one text or a batch.

        Args:
            texts: a string or a sequence of B strings.
            context_length: L, the output length; defaults to :attr:`context_length`. Longer texts are
                truncated so that the EOS token stays last.

        Returns:
            ``txt_ids`` (B, L) ``torch.long``: ``[bos] tokens [eos] pad...``.
        """
        if isinstance(texts, str):
            texts = [texts]
        length = self._context_length if context_length is None else int(context_length)
        if length < 2:
            raise ValueError(f'context_length must be >= 2 to hold BOS and EOS, got {length}')
        txt_ids = torch.full((len(texts), length), self._pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self._bos_id, *self.encode(text)[: length - 2], self._eos_id]
            txt_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return txt_ids

    def ids_and_mask(self, texts: Sequence[str], *, trim: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize a batch -> ``txt_ids`` (B, L) and ``txt_mask`` (B, L) bool (True on BOS, tokens, EOS).

        L is the longest text of the batch with ``trim``, else the context length (equal shapes on every
        process, e.g. to gather them).
        """
        txt_ids = self(list(texts))
        lengths = self.lengths(txt_ids)
        if trim:
            txt_ids = txt_ids[:, : int(lengths.max())]
        txt_mask = torch.arange(txt_ids.shape[1])[None] < lengths[:, None]
        return txt_ids, txt_mask

    def _strip_specials(self, ids: Sequence[int] | torch.Tensor) -> list[int]:
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f'decode expects one sequence (L,), got shape {tuple(ids.shape)}')
            ids = ids.tolist()
        kept: list[int] = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id == self._eos_id:
                break
            if token_id == self._bos_id or (self._pad_is_dedicated and token_id == self._pad_id):
                continue
            kept.append(token_id)
        return kept

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of one id sequence (L,): stops at the first EOS, drops BOS and padding."""
        return self._decode_tokens(self._strip_specials(ids))

    def batch_decode(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Texts of a batch ``txt_ids`` (B, L)."""
        return [self.decode(row) for row in ids]

    def lengths(self, ids: torch.Tensor) -> torch.Tensor:
        """Real tokens per row of ``txt_ids`` (B, L), BOS and EOS included: first EOS position + 1.

        A row without EOS (an unfinished generation) counts all L positions. Padding is never inspected,
        because CLIP pads with id 0 which is also a real token.
        """
        if ids.dim() != 2:
            raise ValueError(f'lengths expects ids of shape (B, L), got {tuple(ids.shape)}')
        is_eos = ids == self._eos_id
        first_eos = is_eos.int().argmax(dim=1)
        full = torch.full_like(first_eos, ids.shape[1])
        return torch.where(is_eos.any(dim=1), first_eos + 1, full).long()

    def __getstate__(self) -> dict[str, Any]:
        return dict(self._init_kwargs)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __repr__(self) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in self._init_kwargs.items())
        return f'{type(self).__name__}({args})'


# ---------------------------------------------------------------------------------------------------
# CLIP byte-level BPE
# ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """A reversible map from the 256 byte values to printable unicode characters.

    Bytes that are printable in Latin-1 (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to themselves; the
    remaining 68 bytes (controls, space, soft hyphen...) map, in byte order, to code points 256, 257, ...
    so that the BPE never sees whitespace or control characters. The insertion order (printable bytes
    first, then the remapped ones) is the order of the first 256 vocabulary ids.
    """
    printable = [
        *range(ord('!'), ord('~') + 1),
        *range(ord('¡'), ord('¬') + 1),
        *range(ord('®'), ord('ÿ') + 1),
    ]
    mapping = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def default_clip_vocab_path() -> str:
    """Path of the BPE merges file inside the installed open_clip package (the package is not imported)."""
    spec = importlib.util.find_spec('open_clip')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f'CLIPBPETokenizer needs {CLIP_VOCAB_FILE!r}, which ships with open_clip_torch, but open_clip is '
            'not installed: install it or pass vocab_path=... to a copy of the file.'
        )
    return os.path.join(list(spec.submodule_search_locations)[0], CLIP_VOCAB_FILE)


def _clean_clip_text(text: str) -> str:
    """CLIP's cleaning: ftfy repair (if installed), double HTML unescape, whitespace collapse, lower case."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return ' '.join(text.split()).lower()


@TOKENIZERS.register_module()
class CLIPBPETokenizer(TextTokenizer):
    """CLIP's byte-level BPE tokenizer, id-for-id identical to ``open_clip.tokenize``.

    Vocabulary (49408 ids): the 256 byte symbols, the same 256 with ``</w>`` (end of word), 48894 merges,
    then ``<start_of_text>`` (BOS, 49406) and ``<end_of_text>`` (EOS, 49407). Padding is id 0 (which is also
    the token ``!``, so :meth:`decode` keeps id 0 before the EOS).

    Args:
        vocab_path: the gzipped merges file; ``None`` uses ``bpe_simple_vocab_16e6.txt.gz`` from the
            installed open_clip package.
        context_length: default L of :meth:`__call__` (CLIP uses 77).
    """

    def __init__(self, *, vocab_path: str | None = None, context_length: int = 77) -> None:
        self._init_kwargs = {'vocab_path': vocab_path, 'context_length': context_length}
        path = default_clip_vocab_path() if vocab_path is None else vocab_path
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f'CLIP BPE vocabulary not found at {path!r}; pass vocab_path=... to {CLIP_VOCAB_FILE!r} '
                '(it ships inside the open_clip_torch package).'
            )
        with gzip.open(path, 'rt', encoding='utf-8') as handle:
            lines = handle.read().split('\n')
        merges = [tuple(line.split()) for line in lines[1 : _NUM_CLIP_MERGES + 1]]
        if len(merges) != _NUM_CLIP_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f'{path!r} is not a CLIP BPE merges file ({len(merges)} merges read)')

        self._byte_to_char = bytes_to_unicode()
        self._char_to_byte = {char: byte for byte, char in self._byte_to_char.items()}
        symbols = list(self._byte_to_char.values())
        word_ends = [s + _END_OF_WORD for s in symbols]
        vocab = symbols + word_ends + [a + b for a, b in merges] + list(_CLIP_SPECIALS)
        self._token_to_id = {token: index for index, token in enumerate(vocab)}
        self._id_to_token = vocab
        self._merge_rank: dict[tuple[str, ...], int] = {pair: rank for rank, pair in enumerate(merges)}
        specials = '|'.join(_CLIP_SPECIALS)
        self._word_pattern = regex.compile(f'{specials}|{_CLIP_WORD_PATTERN}', regex.IGNORECASE)

        self._bos_id = self._token_to_id[_CLIP_SPECIALS[0]]
        self._eos_id = self._token_to_id[_CLIP_SPECIALS[1]]
        self._pad_id = 0
        self._context_length = int(context_length)
        # Per-instance LRU cache of word -> BPE symbols; rebuilt on unpickling.
        self._bpe_cached: Callable[[str], tuple[str, ...]] = functools.lru_cache(maxsize=2**16)(self._bpe)

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    @property
    def _pad_is_dedicated(self) -> bool:
        return False

    def _bpe(self, word: str) -> tuple[str, ...]:
        """Merge the byte symbols of one pre-token, lowest merge rank first, until no merge applies."""
        if word in _CLIP_SPECIALS:
            return (word,)
        symbols = [*word[:-1], word[-1] + _END_OF_WORD]
        while len(symbols) > 1:
            ranks = [self._merge_rank.get((a, b)) for a, b in zip(symbols[:-1], symbols[1:], strict=True)]
            known = [rank for rank in ranks if rank is not None]
            if not known:
                break
            best = min(known)
            first, second = symbols[ranks.index(best)], symbols[ranks.index(best) + 1]
            merged: list[str] = []
            i = 0
            while i < len(symbols):  # merge every non-overlapping occurrence, left to right
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._word_pattern.findall(_clean_clip_text(text)):
            word = ''.join(self._byte_to_char[b] for b in piece.encode('utf-8'))
            ids.extend(self._token_to_id[symbol] for symbol in self._bpe_cached(word))
        return ids

    def _decode_tokens(self, ids: list[int]) -> str:
        try:
            chars = ''.join(self._id_to_token[i] for i in ids)
        except IndexError as error:
            raise ValueError(f'id out of range for a vocabulary of {self.vocab_size}: {ids}') from error
        words = chars.replace(_END_OF_WORD, ' ')
        # Specials are whole tokens, not byte symbols: keep their text as is.
        data = bytearray()
        for char in words:
            data.extend(bytes([self._char_to_byte[char]]) if char in self._char_to_byte else char.encode())
        return data.decode('utf-8', errors='replace').strip()


# ---------------------------------------------------------------------------------------------------
# tokenizer.json through the HuggingFace `tokenizers` library
# ---------------------------------------------------------------------------------------------------
_BOS_CANDIDATES = ('<bos>', '<s>', '[CLS]', '<start_of_text>', '<|startoftext|>')
_EOS_CANDIDATES = ('<eos>', '</s>', '[SEP]', '<end_of_text>', '<|endoftext|>')
_PAD_CANDIDATES = ('<pad>', '[PAD]')


@TOKENIZERS.register_module()
class HFTokenizer(TextTokenizer):
    """A local ``tokenizer.json`` (HuggingFace ``tokenizers``) behind the common interface.

    The file's post-processor (e.g. BERT's ``[CLS] ... [SEP]`` template), padding and truncation are not
    used: texts are encoded without special tokens and :meth:`__call__` adds BOS/EOS, truncates and pads.

    Args:
        path: the ``tokenizer.json`` file.
        context_length: default L of :meth:`__call__`.
        bos_token, eos_token, pad_token: special tokens; when ``None``, the first one present in the
            vocabulary of ``<bos>``/``<s>``/``[CLS]``, ``<eos>``/``</s>``/``[SEP]`` and ``<pad>``/``[PAD]``.
        lowercase: lower-case texts before encoding (for vocabularies without a lower-casing normalizer).
    """

    def __init__(
        self,
        *,
        path: str,
        context_length: int = 32,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        lowercase: bool = False,
    ) -> None:
        self._init_kwargs = {
            'path': path,
            'context_length': context_length,
            'bos_token': bos_token,
            'eos_token': eos_token,
            'pad_token': pad_token,
            'lowercase': lowercase,
        }
        if not os.path.isfile(path):
            raise FileNotFoundError(f'tokenizer file not found: {path!r}')
        self._tokenizer = Tokenizer.from_file(path)
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._lowercase = lowercase
        self._bos_id = self._find_special('bos_token', bos_token, _BOS_CANDIDATES)
        self._eos_id = self._find_special('eos_token', eos_token, _EOS_CANDIDATES)
        self._pad_id = self._find_special('pad_token', pad_token, _PAD_CANDIDATES)
        self._context_length = int(context_length)

    def _find_special(self, name: str, given: str | None, candidates: Sequence[str]) -> int:
        options = (given,) if given is not None else candidates
        for token in options:
            token_id = self._tokenizer.token_to_id(token)
            if token_id is not None:
                return int(token_id)
        path = self._init_kwargs['path']
        if given is not None:
            raise ValueError(f'{name}={given!r} is not in the vocabulary of {path!r}')
        raise ValueError(f'none of {list(candidates)} is in the vocabulary of {path!r}: pass {name}=...')

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        if self._lowercase:
            text = text.lower()
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids of :meth:`encode` and each token's character span ``[start, end)`` in ``text``.

        Spans come from the ``tokenizers`` alignment (so they survive the file's normalizer); with
        ``lowercase`` they are mapped back through the per-character length of the lower-cased text. A span
        may include a leading space that the tokenizer folded into the token (byte-level BPE).
        """
        source = text.lower() if self._lowercase else text
        encoding = self._tokenizer.encode(source, add_special_tokens=False)
        spans = [(int(start), int(end)) for start, end in encoding.offsets]
        if len(source) != len(text):  # lower-casing changed lengths (e.g. 'İ'): map positions back
            origin = [i for i, char in enumerate(text) for _ in range(len(char.lower()))] + [len(text)]
            spans = [
                (origin[start], origin[end - 1] + 1 if end > start else origin[start]) for start, end in spans
            ]
        return list(encoding.ids), spans

    def _decode_tokens(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=False)).strip()
