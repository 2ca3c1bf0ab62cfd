"""Reading an annotation file (:func:`load_json`, :func:`load_checked_json`: a missing file or invalid JSON
named) and the pre-flight scan that every file the annotations reference exists (:func:`check_files_exist`).
"""

from __future__ import annotations

import os
import os.path as osp
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from toolkit.schema.base import SchemaError

__all__ = ['check_files_exist', 'load_checked_json', 'load_json']

_LISTED_DIR_MIN = 32  # referenced files in one folder from which one directory listing beats one stat each


# ---------------------------------------------------------------------------------------------- loading
def load_json(path: str, *, backend_args: dict[str, Any] | None = None) -> Any:
    """Parse a JSON file (through an mmengine file backend when ``backend_args`` names one); a missing file
    raises FileNotFoundError and invalid JSON a SchemaError, each naming the file."""
    from mmengine.fileio import get_local_path

    if backend_args is None and '://' not in path and not osp.isfile(path):
        raise FileNotFoundError(f'annotation file {path} does not exist')
    import json

    with get_local_path(path, backend_args=backend_args) as local_path, open(local_path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise SchemaError(f'{path}: not valid JSON ({err})', file=path, record='top level') from None


def load_checked_json(
    path: str, check: Callable[..., None], *, backend_args: dict[str, Any] | None = None, **options: Any
) -> Any:
    """:func:`load_json` then ``check(ann, source=path, **options)``; the parsed JSON."""
    ann = load_json(path, backend_args=backend_args)
    check(ann, source=path, **options)
    return ann


# ---------------------------------------------------------------------------------------------- pre-flight
def _existing(paths: Iterable[str]) -> set[str]:
    """Those of ``paths`` that are files. A folder holding many of them is listed once instead of stat-ing
    each file: on network file systems (NFS, Lustre) a stat is a round trip, a listing one for thousands."""
    by_dir: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        by_dir[osp.dirname(path)].append(path)
    found: set[str] = set()
    for folder, members in by_dir.items():
        if len(members) < _LISTED_DIR_MIN:
            found.update(p for p in members if osp.isfile(p))
            continue
        try:
            with os.scandir(folder or '.') as entries:
                files = {entry.name for entry in entries if entry.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            continue
        found.update(p for p in members if osp.basename(p) in files)
    return found


def check_files_exist(
    records: list[dict[str, Any]],
    *,
    ann_file: str,
    path_key: str = 'img_path',
    id_key: str = 'img_id',
    kind: str = 'image',
    on_missing: str = 'raise',
) -> list[dict[str, Any]]:
    """The pre-flight scan: every ``record[path_key]`` must be a file, checked when the data set is built
    (a stat or a directory listing, never a read), so a missing file fails now and not mid-epoch.

    A missing file raises FileNotFoundError naming ``ann_file``, the record (``{kind} id ...``) and the
    path; with ``on_missing='skip'`` its records are dropped and each counted with
    :func:`toolkit.skips.record_skip`. Remote paths (``s3://...``) cannot be stat-ed: the data set's
    ``check_files=False`` turns the scan off for remote storage. Returns the kept records.
    """
    if on_missing not in ('raise', 'skip'):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    paths = [record[path_key] for record in records]
    remote = next((p for p in paths if '://' in p), None)
    if remote is not None:
        raise ValueError(
            f'{ann_file}: cannot check that the remote file {remote} exists; '
            'set check_files=False for remote storage'
        )
    found = _existing(paths)
    if len(found) == len(set(paths)):
        return records
    from toolkit.skips import record_skip

    kept = []
    for record in records:
        path = record[path_key]
        if path in found:
            kept.append(record)
            continue
        if on_missing == 'raise':
            raise FileNotFoundError(
                f'{ann_file}: {kind} {path} ({kind} id {record.get(id_key)!r}) does not exist '
                "(on_missing='skip' drops such records, counted; check_files=False skips this scan, "
                'for remote storage)'
            )
        record_skip(kind, path, f'does not exist (listed in {ann_file})', record_id=record.get(id_key))
    if not kept:
        raise FileNotFoundError(f'{ann_file}: none of the {len(records)} {kind} files exists')
    return kept
