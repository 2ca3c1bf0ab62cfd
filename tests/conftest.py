"""Shared fixtures: a tiny Shapes World data set generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session', autouse=True)
def _toolkit_scope() -> None:
    """Build by our names, as configs with ``default_scope = 'toolkit'`` do."""
    from mmengine.registry import init_default_scope

    import toolkit.registry  # noqa: F401  (creates the toolkit-scoped registries)

    init_default_scope('toolkit')


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope='session')
def shapes_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shapes World ``tiny`` (seconds to make), shared by every test that needs data."""
    from toolkit.shapes_world import generate_shapes_world

    out = tmp_path_factory.mktemp('shapes_world_tiny')
    generate_shapes_world(out, seed=0, size='tiny', workers=1)
    return out
