"""Layout rules of the repository (HOUSE_STYLE.md): modules stay under 600 lines, nothing edits ``sys.path``,
and no script is named like one of the packages (it would shadow the package when run)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ('toolkit', 'pretrain', 'detection', 'video')
MAX_LINES = 600
# insert or append calls on sys.path, sys.path[...] = ..., sys.path += ..., sys.path = ..., pytest's
# monkeypatch.syspath_prepend(...)
SYS_PATH_EDIT = re.compile(
    r'sys\.path\s*(\.\s*(insert|append|extend|remove|pop|clear)\s*\(|\[|\+=|=[^=])|syspath_prepend'
)


def _python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (REPO / folder).rglob('*.py'))


def test_no_module_over_600_lines() -> None:
    too_long = {
        str(path.relative_to(REPO)): lines
        for path in _python_files(*PACKAGES, 'tools')
        if (lines := len(path.read_text(encoding='utf-8').splitlines())) > MAX_LINES
    }
    assert not too_long, f'files over {MAX_LINES} lines (split them by responsibility): {too_long}'


def test_nothing_edits_sys_path() -> None:
    offenders = [
        f'{path.relative_to(REPO)}:{number}: {line.strip()}'
        for path in _python_files('tools', 'tests')
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1)
        if SYS_PATH_EDIT.search(line)
    ]
    assert not offenders, 'sys.path edits (the repository is installed editable):\n' + '\n'.join(offenders)


def test_no_script_named_like_a_package() -> None:
    shadowing = [str(path.relative_to(REPO)) for path in (REPO / 'tools').rglob('*') if path.stem in PACKAGES]
    assert not shadowing, f'scripts named like a package shadow it when run: {shadowing}'
