"""Random captions of token ids and the tokenizer that reads them, laid out like CLIP's BPE vocabulary."""

from __future__ import annotations

import torch

from toolkit.tokenizers import TextTokenizer

__all__ = ['CLIP_VOCAB_SIZE', 'IdTokenizer', 'random_captions']

CLIP_VOCAB_SIZE = 49408  # CLIP BPE: 49406 tokens + <start_of_text> + <end_of_text>


class IdTokenizer(TextTokenizer):
    """A tokenizer whose "texts" are space-separated token ids, laid out like CLIP's.

    It lets the benchmarks feed random captions of a chosen length through MaMMUT's real ``loss`` path (which
    tokenizes ``sample.text``) at a negligible cost, and hand the very same ids to open_clip's CoCa. Ids as
    CLIP's: BOS ``vocab_size - 2``, EOS ``vocab_size - 1``, padding 0 (also a real token, as in CLIP).

    Args:
        vocab_size: V, ids 0 .. V - 1.
        context_length: default L of ``__call__``.
    """

    def __init__(self, *, vocab_size: int = CLIP_VOCAB_SIZE, context_length: int = 32) -> None:
        if vocab_size < 4:
            raise ValueError(f'vocab_size must be >= 4, got {vocab_size}')
        self._init_kwargs = {'vocab_size': vocab_size, 'context_length': context_length}
        self._vocab_size = int(vocab_size)
        self._bos_id = self._vocab_size - 2
        self._eos_id = self._vocab_size - 1
        self._pad_id = 0
        self._context_length = int(context_length)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def _pad_is_dedicated(self) -> bool:
        return False

    def encode(self, text: str) -> list[int]:
        return [int(token) for token in text.split()]

    def _decode_tokens(self, ids: list[int]) -> str:
        return ' '.join(str(token) for token in ids)


def random_captions(
    num: int, *, vocab_size: int, min_tokens: int, max_tokens: int, generator: torch.Generator
) -> list[str]:
    """``num`` captions of uniform random length in [min_tokens, max_tokens] (BOS/EOS excluded).

    Token ids are drawn from 1 .. V - 3: never padding (0), BOS or EOS.
    """
    lengths = torch.randint(min_tokens, max_tokens + 1, (num,), generator=generator).tolist()
    return [
        ' '.join(str(t) for t in torch.randint(1, vocab_size - 2, (n,), generator=generator).tolist())
        for n in lengths
    ]
