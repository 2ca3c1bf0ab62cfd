"""The package layering holds: toolkit <- pretrain <- {detection, video} <- tools (setup.cfg's import-linter
contracts, the check ``make lint`` runs); a failure prints the linter's report of the offending imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name('lint-imports')
    if not lint_imports.exists():
        pytest.fail(f'{lint_imports} is missing: install the test extra (import-linter)')
    # This checkout's packages, whatever the environment's editable install points to.
    env = {
        **os.environ,
        'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])),
    }
    result = subprocess.run(
        [str(lint_imports), '--config', str(REPO / 'setup.cfg'), '--no-cache', '--no-logo'],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f'import contracts broken:\n{result.stdout}\n{result.stderr}'
    assert 'BROKEN' not in result.stdout and ' KEPT' in result.stdout, result.stdout
