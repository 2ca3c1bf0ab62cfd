"""Import a script of ``tools/`` by its path, for tests of its functions (scripts are not packages)."""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

__all__ = ['load_script']


def load_script(path: str | os.PathLike[str], name: str | None = None) -> ModuleType:
    """The module of the Python file ``path``, executed once per call, named ``name`` (default: its stem)."""
    name = name or os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f'{path} cannot be loaded as a Python module')
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import does: dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
