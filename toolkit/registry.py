"""Registries of the toolkit, each a child of its MMDetection counterpart.

Every registry uses the scope ``toolkit`` (configs set ``default_scope =
'toolkit'``) and lists in ``locations`` the modules that register into it; they
are imported lazily, the first time a name is looked up. A lookup that misses
names the closest registered keys.
"""

from __future__ import annotations

import difflib
from typing import Any

from mmdet.registry import DATA_SAMPLERS as MMDET_DATA_SAMPLERS
from mmdet.registry import DATASETS as MMDET_DATASETS
from mmdet.registry import HOOKS as MMDET_HOOKS
from mmdet.registry import LOOPS as MMDET_LOOPS
from mmdet.registry import METRICS as MMDET_METRICS
from mmdet.registry import MODELS as MMDET_MODELS
from mmdet.registry import OPTIM_WRAPPERS as MMDET_OPTIM_WRAPPERS
from mmdet.registry import TRANSFORMS as MMDET_TRANSFORMS
from mmengine.registry import Registry

__all__ = [
    'DATASETS',
    'DATA_SAMPLERS',
    'HOOKS',
    'METRICS',
    'MODELS',
    'OPTIM_WRAPPERS',
    'TOKENIZERS',
    'TRANSFORMS',
    'ToolkitRegistry',
    'all_registries',
]


class ToolkitRegistry(Registry):
    """A registry whose failed lookups suggest the closest registered names."""

    def _visible_keys(self) -> list[str]:
        keys: set[str] = set()
        registry: Registry | None = self
        while registry is not None:
            keys.update(registry.module_dict)
            registry = registry.parent
        return sorted(keys)

    def build(self, cfg: Any, *args: Any, **kwargs: Any) -> Any:
        obj_type = cfg.get('type') if isinstance(cfg, dict) else None
        if isinstance(obj_type, str):
            self.import_from_location()
            if self.get(obj_type) is None:
                close = difflib.get_close_matches(obj_type.split('.')[-1], self._visible_keys(), n=3)
                hint = f' Did you mean {", ".join(repr(c) for c in close)}?' if close else ''
                raise KeyError(
                    f'{obj_type!r} is not registered in the {self.scope}::{self.name} registry.{hint}'
                )
        return super().build(cfg, *args, **kwargs)


MODELS = ToolkitRegistry(
    'model',
    parent=MMDET_MODELS,
    scope='toolkit',
    locations=[
        'pretrain.models.vit',
        'pretrain.models.tube_tokenizer',
        'pretrain.models.text_decoder',
        'pretrain.models.losses',
        'pretrain.models.mammut',
        'pretrain.models.fiber_backbone',
        'pretrain.models.fiber',
        'pretrain.models.fiber_losses',
        'pretrain.models.albef',
        'pretrain.models.albef_losses',
        'pretrain.models.multiway',
        'pretrain.models.visual_tokenizer',
        'pretrain.models.beit3',
        'video.models.data_preprocessor',
        'detection.models.grounding_head',
        'detection.models.fiber_detector',
        'detection.models.simple_pyramid',
        'detection.models.text_bbox_head',
        'detection.models.mammut_detector',
    ],
)
DATASETS = ToolkitRegistry(
    'dataset',
    parent=MMDET_DATASETS,
    scope='toolkit',
    locations=[
        'pretrain.datasets.image_text',
        'pretrain.datasets.webdataset',
        'video.datasets.msrvtt',
        'detection.datasets.ov_detection',
        'toolkit.resume',
    ],
)
TRANSFORMS = ToolkitRegistry(
    'transform',
    parent=MMDET_TRANSFORMS,
    scope='toolkit',
    locations=[
        'pretrain.datasets.transforms',
        'video.datasets.transforms',
        'detection.datasets.transforms',
        'toolkit.transforms',
    ],
)
DATA_SAMPLERS = ToolkitRegistry(
    'data sampler',
    parent=MMDET_DATA_SAMPLERS,
    scope='toolkit',
    locations=['toolkit.samplers', 'toolkit.resume'],
)
METRICS = ToolkitRegistry(
    'metric',
    parent=MMDET_METRICS,
    scope='toolkit',
    locations=[
        'pretrain.evaluation.retrieval',
        'pretrain.evaluation.caption',
        'video.evaluation.vqa',
        'detection.evaluation.ov_metric',
    ],
)
LOOPS = ToolkitRegistry('loop', parent=MMDET_LOOPS, scope='toolkit', locations=['toolkit.resume'])
HOOKS = ToolkitRegistry(
    'hook', parent=MMDET_HOOKS, scope='toolkit', locations=['toolkit.hooks', 'pretrain.datasets.webdataset']
)
OPTIM_WRAPPERS = ToolkitRegistry(
    'optim_wrapper', parent=MMDET_OPTIM_WRAPPERS, scope='toolkit', locations=['toolkit.optim']
)
# Tokenizers have no MMDetection counterpart: a root registry in our scope.
TOKENIZERS = ToolkitRegistry('tokenizer', scope='toolkit', locations=['toolkit.tokenizers'])


def all_registries() -> dict[str, ToolkitRegistry]:
    """The toolkit's registries by name, for tests and tools that walk them all."""
    return {
        'MODELS': MODELS,
        'DATASETS': DATASETS,
        'DATA_SAMPLERS': DATA_SAMPLERS,
        'TRANSFORMS': TRANSFORMS,
        'METRICS': METRICS,
        'HOOKS': HOOKS,
        'LOOPS': LOOPS,
        'OPTIM_WRAPPERS': OPTIM_WRAPPERS,
        'TOKENIZERS': TOKENIZERS,
    }
