"""Shared fixtures: a tiny Shapes World data set generated once per test session, and a loader of the
benchmark scripts."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

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


@pytest.fixture
def load_benchmark(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], ModuleType]]:
    """``load_benchmark('video')`` imports ``tools/benchmark/video.py`` by path, its folder first on
    ``sys.path`` as when it runs; the torch thread count the scripts set is restored afterwards."""
    folder = REPO / 'tools' / 'benchmark'
    monkeypatch.syspath_prepend(str(folder))
    threads = torch.get_num_threads()

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f'benchmark_{name}', folder / f'{name}.py')
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        return module

    yield load
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def shapes_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shapes World ``tiny`` (seconds to make), shared by every test that needs data."""
    from toolkit.shapes_world import generate_shapes_world

    out = tmp_path_factory.mktemp('shapes_world_tiny')
    generate_shapes_world(out, seed=0, size='tiny', workers=1)
    return out
