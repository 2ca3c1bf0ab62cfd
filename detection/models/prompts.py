"""Detection prompts: category names -> a caption, its token ids and the token-span positive map.

GLIP (Li et al., "Grounded Language-Image Pre-training", CVPR 2022, Sec. 3.1) turns detection into phrase
grounding: the class names are joined into one prompt, ``"person. bicycle. car. ... toothbrush."``, and a
region is scored against each name through the tokens that spell it. FIBER (Dou et al., NeurIPS 2022,
Sec. 3.2) keeps this head on top of its fusion backbone. A prompt that is too long for the text encoder is
split into chunks of ``chunked_size`` names (GLIP's LVIS evaluation, 40 names a chunk), each a separate
caption.

* Names are cleaned (:func:`detection.vocabulary.clean_name`: LVIS ``'aerosol_can'`` -> ``'aerosol can'``) and
  joined with :data:`detection.vocabulary.SEPARATOR`.
* :func:`build_caption` joins names with ``'. '`` and ends with ``'.'``; it returns each name's character
  span in the caption.
* :func:`encode_prompt` tokenizes the caption once, with character offsets
  (:meth:`toolkit.tokenizers.HFTokenizer.encode_with_offsets`), and marks token ``j`` positive for name ``i``
  when the token's span overlaps the name's span: sub-words and multi-word names are covered, separators
  never are. Sequences are laid out ``[bos] tokens [eos]`` (the toolkit tokenizers' layout).
* :func:`collate_prompts` pads a batch of prompts; :func:`chunk_names` splits a vocabulary.

What differs from GLIP: positive maps come from the tokenizer's offsets rather than ``char_to_token`` with
its +-1/+-2 character retries, and a name that would be truncated away is an error, not a silent empty row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from detection.vocabulary import SEPARATOR, clean_name

__all__ = [
    'GroundingPrompt',
    'OffsetTokenizer',
    'build_caption',
    'chunk_names',
    'collate_prompts',
    'encode_prompt',
]


class OffsetTokenizer(Protocol):
    """What prompts need from a tokenizer (:class:`toolkit.tokenizers.HFTokenizer` provides it)."""

    @property
    def bos_token_id(self) -> int: ...

    @property
    def eos_token_id(self) -> int: ...

    @property
    def pad_token_id(self) -> int: ...

    @property
    def context_length(self) -> int: ...

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]: ...


@dataclass(frozen=True)
class GroundingPrompt:
    """One encoded prompt.

    Attributes:
        names: the category names, in prompt order (as given, before :func:`clean_name`).
        caption: the text fed to the tokenizer.
        input_ids: (L,) ``[bos] tokens [eos]``.
        positive_map: (N, L) bool, ``positive_map[i, j]`` is True when token ``j`` spells name ``i``.
    """

    names: tuple[str, ...]
    caption: str
    input_ids: Tensor
    positive_map: Tensor

    def __len__(self) -> int:
        return len(self.names)


def build_caption(names: Sequence[str], separator: str = SEPARATOR) -> tuple[str, list[tuple[int, int]]]:
    """``'a. b. c.'`` from ``names`` and the character span ``[start, end)`` of each name in it."""
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0
    for index, name in enumerate(names):
        spans.append((length, length + len(name)))
        piece = name + (separator if index < len(names) - 1 else separator.rstrip())
        pieces.append(piece)
        length += len(piece)
    return ''.join(pieces), spans


def encode_prompt(
    tokenizer: OffsetTokenizer,
    names: Sequence[str],
    *,
    separator: str = SEPARATOR,
    max_length: int | None = None,
) -> GroundingPrompt:
    """Tokenize the prompt of ``names`` and map every name to the tokens that spell it.

    Args:
        tokenizer: a tokenizer with ``encode_with_offsets`` and BOS/EOS ids.
        names: N >= 1 category names (cleaned with :func:`clean_name` for the caption).
        separator: text between two names.
        max_length: most tokens, BOS and EOS included; ``None`` = the tokenizer's ``context_length``.

    Raises:
        ValueError: no names, a name that is empty once cleaned or spelt by no token, or a prompt longer
            than ``max_length`` (split the vocabulary with :func:`chunk_names`).
    """
    if not hasattr(tokenizer, 'encode_with_offsets'):
        raise TypeError(
            f'{type(tokenizer).__name__} has no encode_with_offsets(text); detection prompts need token '
            'character offsets (use HFTokenizer with a tokenizer.json)'
        )
    if len(names) == 0:
        raise ValueError('a detection prompt needs at least one category name')
    cleaned = [clean_name(str(name)) for name in names]
    empty = [name for name, text in zip(names, cleaned, strict=True) if not text]
    if empty:
        raise ValueError(f'category names {empty!r} are empty once cleaned')
    caption, spans = build_caption(cleaned, separator)
    ids, offsets = tokenizer.encode_with_offsets(caption)
    limit = tokenizer.context_length if max_length is None else int(max_length)
    if len(ids) + 2 > limit:
        raise ValueError(
            f'the prompt of {len(names)} names is {len(ids) + 2} tokens, more than max_length={limit}: '
            'split the vocabulary into chunks (test_cfg.chunked_size) or sample fewer names '
            f'(SampleGroundingNames.max_names); caption starts {caption[:80]!r}'
        )
    input_ids = torch.tensor([tokenizer.bos_token_id, *ids, tokenizer.eos_token_id], dtype=torch.long)
    tok_span = torch.tensor(offsets, dtype=torch.long).reshape(-1, 2)  # (T, 2)
    name_span = torch.tensor(spans, dtype=torch.long)  # (N, 2)
    start = torch.maximum(name_span[:, None, 0], tok_span[None, :, 0])
    end = torch.minimum(name_span[:, None, 1], tok_span[None, :, 1])
    overlap = start < end  # (N, T): the token covers part of the name
    positive_map = torch.zeros(len(names), len(input_ids), dtype=torch.bool)
    positive_map[:, 1 : 1 + len(ids)] = overlap
    unspelt = [names[i] for i in torch.nonzero(~positive_map.any(dim=1)).flatten().tolist()]
    if unspelt:
        raise ValueError(f'no token spells the category names {unspelt!r} in {caption!r}')
    return GroundingPrompt(tuple(names), caption, input_ids, positive_map)


def collate_prompts(
    prompts: Sequence[GroundingPrompt], pad_token_id: int
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Pad B prompts to the longest: ``input_ids`` (B, L), ``attention_mask`` (B, L) bool and the positive
    maps, each (N_b, L)."""
    if not prompts:
        raise ValueError('collate_prompts needs at least one prompt')
    length = max(len(p.input_ids) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(prompts), length, dtype=torch.bool)
    maps = []
    for row, prompt in enumerate(prompts):
        n = len(prompt.input_ids)
        input_ids[row, :n] = prompt.input_ids
        attention_mask[row, :n] = True
        padded = torch.zeros(len(prompt), length, dtype=torch.bool)
        padded[:, :n] = prompt.positive_map
        maps.append(padded)
    return input_ids, attention_mask, maps


def chunk_names(names: Sequence[Any], chunked_size: int) -> list[range]:
    """Index ranges of consecutive chunks of at most ``chunked_size`` names (``<= 0``: one chunk)."""
    num = len(names)
    if chunked_size <= 0 or chunked_size >= num:
        return [range(0, num)]
    return [range(start, min(start + chunked_size, num)) for start in range(0, num, chunked_size)]
