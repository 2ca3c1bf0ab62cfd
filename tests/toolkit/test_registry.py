"""Registries: names unique against MMDetection/MMEngine, every location imports, helpful misses."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from mmengine.registry import Registry

from toolkit.registry import MODELS, all_registries


def _ancestors(registry: Registry) -> list[Registry]:
    out = []
    parent = registry.parent
    while parent is not None:
        out.append(parent)
        parent = parent.parent
    return out


@pytest.fixture(scope='module', autouse=True)
def _import_everything() -> None:
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    for registry in all_registries().values():
        registry.import_from_location()


@pytest.mark.parametrize('name', sorted(all_registries()))
def test_locations_import(name: str) -> None:
    registry = all_registries()[name]
    assert registry.scope == 'toolkit'
    for location in registry._locations:
        importlib.import_module(location)


@pytest.mark.parametrize('name', sorted(all_registries()))
def test_names_unique_against_mmdet_and_mmengine(name: str) -> None:
    registry = all_registries()[name]
    for key, cls in registry.module_dict.items():
        assert key == cls.__name__, f'{key} is registered under an alias of {cls.__name__}'
        for ancestor in _ancestors(registry):
            assert key not in ancestor.module_dict, f'{key} shadows {ancestor.scope}::{ancestor.name}'


def test_every_registry_has_entries() -> None:
    for name, registry in all_registries().items():
        assert len(registry.module_dict) > 0, f'{name} registers nothing'


def test_miss_suggests_close_names() -> None:
    with pytest.raises(KeyError, match="Did you mean 'MaMMUT'"):
        MODELS.build(dict(type='MaMUT'))


@pytest.mark.parametrize('package', ['toolkit', 'pretrain', 'detection', 'video'])
def test_generic_packages_resolve_inside_repository(package: str, repo_root: Path) -> None:
    module = importlib.import_module(package)
    assert Path(module.__file__).resolve().parent == repo_root / package
