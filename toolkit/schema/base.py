"""The machinery every annotation check uses: :class:`SchemaError`, which names the file, the record and the
key; a file's record lists, ids, references and texts (:class:`_File`); relative paths inside the data
root. The underscored helpers are shared by the modules of this package only."""

from __future__ import annotations

import os.path as osp
from collections.abc import Container, Sequence
from typing import Any, NoReturn

__all__ = ['SchemaError', 'check_relative_path']

_NUMBER = (int, float)  # JSON numbers; ``type(x) in _NUMBER`` also excludes bool
_MISSING = object()


class SchemaError(ValueError):
    """A malformed annotation file. ``file``, ``record`` and ``key`` say where (``key`` is None when the
    record itself is wrong); the message says that and what was expected.

    Constructible from the message alone, as DataLoader workers re-raise exceptions.
    """

    def __init__(self, message: str, *, file: str = '', record: str = '', key: str | None = None) -> None:
        super().__init__(message)
        self.file, self.record, self.key = file, record, key


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a value cut to ``limit`` characters (a huge caption must not flood the message)."""
    text = repr(value)
    return text if len(text) <= limit else f'{text[:limit]}... ({len(text)} characters)'


def _name(list_key: str, index: int, record: Any, id_key: str = 'id') -> str:
    """``annotations[17] (id 123)``: the record's place and, when it has a usable one, its id."""
    rec_id = record.get(id_key) if isinstance(record, dict) else None
    return (
        f'{list_key}[{index}] ({id_key} {_short(rec_id, 40)})'
        if type(rec_id) in (int, str)
        else f'{list_key}[{index}]'
    )


def _type_name(value: Any) -> str:
    return 'nothing (key missing)' if value is _MISSING else f'{type(value).__name__} {_short(value)}'


class _File:
    """The checks' access to one file's name, for messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, record: str, key: str | None, problem: str) -> NoReturn:
        where = record if key is None else f'{record}, key {key!r}'
        raise SchemaError(f'{self.source}: {where}: {problem}', file=self.source, record=record, key=key)

    def records(self, ann: Any, key: str, what: str) -> list[Any]:
        """``ann[key]``, which must be a list (of objects: each loop checks its own)."""
        if not isinstance(ann, dict):
            self.fail('top level', None, f'expected an object with {key!r}, got {type(ann).__name__}')
        value = ann.get(key, _MISSING)
        if type(value) is not list:
            self.fail('top level', key, f'expected a list of {what}, got {_type_name(value)}')
        return value

    def duplicates(
        self,
        list_key: str,
        records: Sequence[Any],
        ids: list[Any],
        id_key: str = 'id',
        positions: list[int] | None = None,
    ) -> None:
        """Fail on the second record of a repeated id. ``ids`` are in record order, one per record, or, where
        the id is optional, one per record at ``positions``."""
        if len(set(ids)) == len(ids):
            return
        first: dict[Any, int] = {}
        for n, rec_id in enumerate(ids):
            index = n if positions is None else positions[n]
            if rec_id in first:
                self.fail(
                    _name(list_key, index, records[index], id_key),
                    id_key,
                    f'duplicate {id_key} {rec_id!r} (also {list_key}[{first[rec_id]}])',
                )
            first[rec_id] = index

    def known_id(self, record: str, key: str, value: Any, known: Container[Any], section: str) -> None:
        """An integer id listed in ``section`` (``known``: its ids; ``key`` is e.g. ``'image_id'``)."""
        if type(value) is not int:
            self.fail(record, key, f'expected an integer id, got {_type_name(value)}')
        if value not in known:
            what = key.removesuffix('_id')
            self.fail(record, key, f'{value} is not an id in "{section}" (unknown {what} id)')

    def text(self, record: str, key: str, value: Any, max_chars: int) -> None:
        """A non-empty string of at most ``max_chars`` characters."""
        if type(value) is not str:
            self.fail(record, key, f'expected a string, got {_type_name(value)}')
        if not value or value.isspace():
            self.fail(record, key, f'expected a non-empty text, got {value!r}')
        if len(value) > max_chars:
            self.fail(record, key, f'text of {len(value)} characters exceeds max_caption_chars={max_chars}')


def check_relative_path(name: Any) -> str | None:
    """Why ``name`` is not a usable relative path inside a data root, or None when it is."""
    if type(name) is not str:
        return f'expected a string path, got {_type_name(name)}'
    if not name:
        return 'expected a file name, got an empty string'
    norm = name.replace('\\', '/')
    if norm.startswith('/') or osp.isabs(name) or (len(norm) > 1 and norm[1] == ':'):
        return f'{name!r} escapes the data root (an absolute path; expected one relative to it)'
    if '..' in norm and '..' in norm.split('/'):
        return f'{name!r} escapes the data root (a ".." component; expected a path inside it)'
    return None
