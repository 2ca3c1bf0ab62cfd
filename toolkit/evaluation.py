"""Helpers shared by the metrics of every area."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mmengine.structures import BaseDataElement

__all__ = ['get_sample_field', 'has_sample_field']


def get_sample_field(sample: Any, name: str) -> Any:
    """Field ``name`` of a data sample (a dict or a :class:`BaseDataElement`); a clear error if missing."""
    if isinstance(sample, Mapping):
        if name in sample:
            return sample[name]
    elif isinstance(sample, BaseDataElement) and name in sample:
        return sample.get(name)
    keys = sorted(sample.keys()) if hasattr(sample, 'keys') else type(sample).__name__
    raise KeyError(f'data sample has no field {name!r} (it has {keys})')


def has_sample_field(sample: Any, name: str) -> bool:
    """Whether a data sample (dict or :class:`BaseDataElement`) has ``name``, set to something not None."""
    if isinstance(sample, Mapping | BaseDataElement):
        return name in sample and get_sample_field(sample, name) is not None
    return False
