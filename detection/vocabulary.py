"""Category vocabularies of open-vocabulary detection: names as prompts spell them, and base/novel splits.

Shared by the data (``detection.datasets``: data sets, prompt sampling), the models (``detection.models``:
detectors read a sample's vocabulary) and the metrics (``detection.evaluation``), which import it rather
than each other.

* :data:`SEPARATOR` joins the names of a prompt (GLIP/FIBER: ``'a. b. c.'``); :func:`clean_name` makes a
  file's category name readable (LVIS ``'aerosol_can'`` -> ``'aerosol can'``, parenthesised qualifiers
  dropped), as GLIP's ``clean_label_name``; :func:`split_caption` and :func:`sample_names` read the names
  back from a caption or a data sample's ``text``.
* :func:`read_ov_split` reads an open-vocabulary split (``base`` and ``novel`` names) from a JSON file or a
  mapping; an LVIS annotation file gives ViLD's frequency split (:func:`lvis_frequency_split`: frequent +
  common base, rare novel).
"""

from __future__ import annotations

import json
import os.path as osp
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    'SEPARATOR',
    'clean_name',
    'lvis_frequency_split',
    'read_ov_split',
    'sample_names',
    'split_caption',
]

SEPARATOR = '. '  # GLIP/FIBER's SEPARATION_TOKENS


def clean_name(name: str) -> str:
    """A category name as it reads in a prompt: no ``(...)`` qualifiers, underscores as spaces."""
    name = re.sub(r'\(.*?\)', ' ', name).replace('_', ' ')
    return ' '.join(name.split())


def split_caption(caption: str, separator: str = SEPARATOR) -> tuple[str, ...]:
    """Names of a user caption ``'red circle. blue square.'`` (GLIP's ``custom_entities`` parsing)."""
    mark = separator.strip() or separator
    return tuple(part.strip() for part in caption.split(mark) if part.strip())


def sample_names(sample: Any, owner: str, separator: str = SEPARATOR) -> tuple[str, ...]:
    """The vocabulary of a data sample: its metainfo ``text``, a tuple of names or a caption ``'a. b.'``.

    ``owner`` (the detector's name) starts the error raised when there is no ``text`` or no name in it.
    """
    text = sample.metainfo.get('text') if hasattr(sample, 'metainfo') else None
    if text is None:
        raise ValueError(
            f'{owner}: the data sample has no `text` (its vocabulary): use a dataset with '
            "return_classes=True and PackDetInputs meta_keys with 'text', or set it on the sample"
        )
    names = split_caption(text, separator) if isinstance(text, str) else tuple(str(name) for name in text)
    if not names:
        raise ValueError(f'{owner}: empty vocabulary in the data sample text {text!r}')
    return names


def lvis_frequency_split(categories: list[dict[str, Any]], where: str = 'categories') -> dict[str, list[str]]:
    """OV-LVIS (ViLD): frequent and common categories are base, rare ones novel, from LVIS ``frequency``."""
    if not all('frequency' in c and 'name' in c for c in categories):
        raise ValueError(f'{where}: LVIS categories need "name" and "frequency" ("f", "c" or "r")')
    return {
        'base': [c['name'] for c in categories if c['frequency'] in ('f', 'c')],
        'novel': [c['name'] for c in categories if c['frequency'] == 'r'],
    }


def read_ov_split(
    ov_split: str | Mapping[str, Any] | None, data_root: str | None = None
) -> dict[str, tuple[str, ...]] | None:
    """``{'base': names, 'novel': names}`` from a JSON file (relative to ``data_root``) or a mapping.

    An LVIS annotation file (or mapping) with ``categories`` and no ``base`` list gives ViLD's OV-LVIS split
    (:func:`lvis_frequency_split`).
    """
    if ov_split is None:
        return None
    where = 'ov_split'
    if isinstance(ov_split, str):
        path = ov_split if osp.isabs(ov_split) or not data_root else osp.join(data_root, ov_split)
        if not osp.isfile(path):
            raise FileNotFoundError(f'ov_split file not found: {path}')
        with open(path) as f:
            ov_split = json.load(f)
        where = path
    if isinstance(ov_split, Mapping) and 'categories' in ov_split and 'base' not in ov_split:
        ov_split = lvis_frequency_split(ov_split['categories'], where)
    if not isinstance(ov_split, Mapping) or not all(
        isinstance(ov_split.get(k), list | tuple) for k in ('base', 'novel')
    ):
        raise ValueError(
            f'{where}: an open-vocabulary split needs "base" and "novel" lists of category names'
        )
    base, novel = tuple(ov_split['base']), tuple(ov_split['novel'])
    if set(base) & set(novel):
        raise ValueError(f'{where}: categories both base and novel: {sorted(set(base) & set(novel))}')
    return {'base': base, 'novel': novel}
