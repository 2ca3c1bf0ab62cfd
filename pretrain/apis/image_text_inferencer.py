"""Call a trained image-text model (MaMMUT, ALBEF, BEiT-3, FIBER) from Python: embeddings, captions, zero-shot
classification and retrieval, as open_clip's ``create_model_and_transforms`` + ``encode_image`` and mmdet's
``DetInferencer`` offer.

``ImageTextInferencer(config, checkpoint)`` builds the config's model with :func:`toolkit.apis.init_model` and
its TEST pipeline (the resize and packing of ``tools/test.py``; images decoded by the config's loader, e.g.
``LoadImageSafely``); the model's data preprocessor normalises. Every model call goes through the
:class:`~pretrain.models.image_text_model.ImageTextModel` interface, whose methods are the ones the model's
own ``predict`` uses, so the numbers equal those of the model's evaluation:

* ``encode_image`` / ``encode_text``: the L2-normalised embeddings ``RetrievalMetric`` ranks with;
* ``retrieve``: their cosine similarities (``RetrievalMetric``'s matrix) and the rankings both ways; with
  ``rerank_k=k`` (ALBEF, FIBER pretraining: models with an ITM head) the top k of every query are re-ordered
  by the ITM score exactly as ``RetrievalMetric(rerank_k=k)`` does (the configs' test evaluators use 16). The
  default is ``rerank_k=0``: the contrastive (dual-encoder) order;
* ``caption``: the model's ``generate`` with the config's ``generation`` settings, as ``predict``;
* ``zero_shot_classify``: softmax over class names of ``logit_scale * cosine similarity`` (CLIP).

Images are a path, a folder (its image files, sorted by name), an RGB uint8 array (H, W, 3) or a list of
these. Tensors come back on the CPU; nothing is cached between calls.
"""

from __future__ import annotations

import os
import os.path as osp
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.transforms import LoadImageFromFile
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from torch import Tensor

from pretrain.evaluation.retrieval import rerank_both_ways
from pretrain.models.image_text_model import ImageTextModel, TaskNotSupportedError
from toolkit.apis import init_model
from toolkit.registry import TRANSFORMS
from toolkit.transforms import ImageDecodeError

__all__ = [
    'IMAGE_EXTENSIONS',
    'ImageInput',
    'ImageTextInferencer',
    'ImageTextInputError',
    'RetrievalResult',
    'TaskNotSupportedError',
]

ImageInput: TypeAlias = str | os.PathLike[str] | np.ndarray
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')  # what a folder is scanned for
DEFAULT_TEMPLATES = ('a photo of a {}.',)  # CLIP's single prompt
# Image-caption pairs per ITM call when re-ranking: RetrievalMetric's chunk (the model sees the same batches).
_PAIR_CHUNK = 256


class ImageTextInputError(ValueError):
    """An input the inferencer cannot use (unreadable image, empty folder, no texts or names); the message
    names it."""


@dataclass(frozen=True)
class RetrievalResult:
    """Image-text retrieval of N images against M texts.

    Attributes:
        similarity: (N, M) cosine similarities of the contrastive embeddings (``RetrievalMetric``'s matrix).
        i2t: (N, M) text indices per image, best first.
        t2i: (M, N) image indices per text, best first.
        rerank_k: candidates per query re-ordered by ITM (0: the contrastive order).
    """

    similarity: Tensor
    i2t: Tensor
    t2i: Tensor
    rerank_k: int


class ImageTextInferencer:
    """Embeddings, captions, zero-shot labels and retrieval from one image-text config and checkpoint.

    Args:
        config: a config file or ``Config`` (its ``model`` and test pipeline are used).
        checkpoint: weights for :func:`toolkit.apis.init_model`; ``None``: the config's initialisation.
        device: torch device of the model (``'cpu'``, ``'cuda'``, ``'cuda:1'``...).
        cfg_options: overrides merged into the config, as ``--cfg-options``.
        batch_size: images or texts per model call.
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | Config,
        checkpoint: str | os.PathLike[str] | None = None,
        *,
        device: str | torch.device = 'cpu',
        cfg_options: Mapping[str, Any] | None = None,
        batch_size: int = 32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        model = init_model(config, checkpoint, device=device, cfg_options=cfg_options)
        self.cfg = cast(Config, model.cfg)
        if not isinstance(model, ImageTextModel):
            raise TypeError(
                f'config {self.cfg.filename} builds a {type(model).__name__}, not an image-text model '
                '(MaMMUT, ALBEF, BEiT3, FIBER: pretrain.models.image_text_model.ImageTextModel)'
            )
        self.model = model
        self.batch_size = int(batch_size)
        steps = [TRANSFORMS.build(dict(step)) for step in self._test_pipeline(self.cfg)]
        if not steps or not isinstance(steps[0], LoadImageFromFile):
            raise ValueError(f'config {self.cfg.filename}: the test pipeline must start with an image loader')
        self.loader: LoadImageFromFile = steps[0]
        self.transforms = Compose(steps[1:])  # resize ... pack, shared by files and arrays

    @staticmethod
    def _test_pipeline(cfg: Config) -> list[dict[str, Any]]:
        pipeline = cfg.get('test_pipeline') or cfg.get('test_dataloader', {}).get('dataset', {}).get(
            'pipeline'
        )
        if not pipeline:
            raise ValueError(
                f'config {cfg.filename} has no test_pipeline (nor test_dataloader.dataset.pipeline)'
            )
        return list(pipeline)

    @property
    def model_name(self) -> str:
        return f'{type(self.model).__name__} (config {self.cfg.filename})'

    def _require(self, supported: bool, task: str) -> None:
        if not supported:
            raise TaskNotSupportedError(f'{self.model_name} does not {task}')

    # ------------------------------------------------------------------------------------------ inputs
    @staticmethod
    def image_sources(images: ImageInput | Sequence[ImageInput]) -> list[tuple[str, str | np.ndarray]]:
        """``(name, path or array)`` of every image: folders expanded (sorted), arrays named ``array i``."""
        items = [images] if isinstance(images, str | os.PathLike | np.ndarray) else list(images)
        if not items:
            raise ImageTextInputError('no images given (an empty list)')
        sources: list[tuple[str, str | np.ndarray]] = []
        for index, item in enumerate(items):
            if isinstance(item, np.ndarray):
                if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
                    raise ImageTextInputError(
                        f'image array {index}: expected RGB uint8 (H, W, 3), got {item.dtype} {item.shape}'
                    )
                sources.append((f'array {index}', item))
                continue
            if not isinstance(item, str | os.PathLike):
                raise ImageTextInputError(
                    f'image {index}: expected a path or an array, got {type(item).__name__}'
                )
            path = os.fspath(item)
            if osp.isdir(path):
                names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
                if not names:
                    raise ImageTextInputError(
                        f'folder {path} has no image files ({", ".join(IMAGE_EXTENSIONS)})'
                    )
                sources += [(osp.join(path, n), osp.join(path, n)) for n in names]
            elif osp.isfile(path):
                sources.append((path, path))
            else:
                raise ImageTextInputError(f'image {path} does not exist')
        return sources

    def _load(self, name: str, source: str | np.ndarray) -> dict[str, Any]:
        """One image through the test pipeline -> ``dict(inputs=(3, H, W), data_samples=...)``."""
        if isinstance(source, np.ndarray):
            img = np.ascontiguousarray(source[..., ::-1])  # RGB -> BGR, the loader's (mmcv's) channel order
            if self.loader.to_float32:
                img = img.astype(np.float32)
            results: dict[str, Any] | None = dict(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2])
        else:
            try:
                results = self.loader(dict(img_path=source))
            except (ImageDecodeError, OSError) as err:
                raise ImageTextInputError(f'image {name} cannot be read: {err}') from err
            if results is None:  # a loader with on_error='skip'
                raise ImageTextInputError(f'image {name} cannot be read (skipped by the loader)')
        return cast(dict[str, Any], self.transforms(results))

    def input_batches(self, images: ImageInput | Sequence[ImageInput]) -> Iterator[Tensor]:
        """Model inputs (B, 3, H, W) of ``batch_size`` images at a time (test pipeline, data preprocessor), on
        the model's device; every source is checked before the first image is decoded."""
        sources = self.image_sources(images)
        preprocessor = cast(Callable[[Any, bool], dict[str, Any]], self.model.data_preprocessor)
        for start in range(0, len(sources), self.batch_size):
            packed = [self._load(name, source) for name, source in sources[start : start + self.batch_size]]
            with torch.no_grad():
                inputs = preprocessor(pseudo_collate(packed), False)['inputs']
            yield inputs

    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> Tensor:
        """Model inputs (N, 3, H, W) of all the images (see :meth:`input_batches`)."""
        return torch.cat(list(self.input_batches(images)))

    @staticmethod
    def _texts(texts: str | Sequence[str], what: str = 'text') -> list[str]:
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            raise ImageTextInputError(f'no {what}s given (an empty list)')
        for index, text in enumerate(items):
            if not isinstance(text, str) or not text.strip():
                raise ImageTextInputError(f'{what} {index} is {text!r}: expected a non-empty string')
        return items

    # ------------------------------------------------------------------------------------------ embeddings
    @torch.no_grad()
    def encode_image(self, images: ImageInput | Sequence[ImageInput]) -> Tensor:
        """Images -> ``img_emb`` (N, E), L2-normalised, float32 on the CPU."""
        self._require(self.model.supports_embedding, 'embed images and texts (no contrastive heads)')
        return torch.cat(
            [self.model.encode_image(batch).float().cpu() for batch in self.input_batches(images)]
        )

    @torch.no_grad()
    def encode_text(self, texts: str | Sequence[str]) -> Tensor:
        """M texts -> ``txt_emb`` (M, E), L2-normalised, float32 on the CPU."""
        self._require(self.model.supports_embedding, 'embed images and texts (no contrastive heads)')
        texts = self._texts(texts)
        return torch.cat(
            [
                self.model.encode_text(texts[start : start + self.batch_size]).float().cpu()
                for start in range(0, len(texts), self.batch_size)
            ]
        )

    # ------------------------------------------------------------------------------------------ tasks
    @torch.no_grad()
    def caption(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        beam_size: int | None = None,
        max_len: int | None = None,
    ) -> list[str]:
        """One caption per image, decoded as the config's ``generation`` says (as ``predict``).

        Args:
            images: see the module docstring.
            beam_size: 1 = greedy, > 1 = beam search of that width; ``None``: the config's.
            max_len: most tokens generated; ``None``: the config's.
        """
        self._require(self.model.supports_captioning, 'caption images (no captioning pass)')
        options: dict[str, Any] = {}
        if beam_size is not None:
            if beam_size < 1:
                raise ValueError(f'beam_size must be >= 1, got {beam_size}')
            options['method'] = 'greedy' if beam_size == 1 else 'beam'
            if beam_size > 1:
                options['beam_size'] = int(beam_size)
        if max_len is not None:
            if max_len < 1:
                raise ValueError(f'max_len must be >= 1, got {max_len}')
            options['max_len'] = int(max_len)
        captions: list[str] = []
        for batch in self.input_batches(images):
            captions += self.model.generate(batch, **options)
        return captions

    @torch.no_grad()
    def zero_shot_classify(
        self,
        images: ImageInput | Sequence[ImageInput],
        names: Sequence[str],
        *,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
    ) -> list[list[tuple[str, float]]]:
        """Per image, ``(name, probability)`` of every class name, most probable first.

        A class embedding is the normalised mean of the text embeddings of its prompts
        (``template.format(name)`` for each template, CLIP); probabilities are
        ``softmax(logit_scale * img_emb @ class_emb.T)`` over the names.
        """
        names = self._texts(names, 'class name')
        if len(set(names)) != len(names):
            raise ImageTextInputError(f'class names must be distinct, got {names}')
        templates = self._texts(templates, 'template')
        for template in templates:
            if '{}' not in template:
                raise ImageTextInputError(f'template {template!r} has no {{}} for the class name')
        prompts = [template.format(name) for name in names for template in templates]
        txt_emb = self.encode_text(prompts).view(len(names), len(templates), -1)  # (C, T, E)
        class_emb = F.normalize(txt_emb.mean(dim=1), dim=-1)  # (C, E)
        img_emb = self.encode_image(images)  # (N, E)
        scale = float(self.model.current_logit_scale())
        probs = (scale * img_emb @ class_emb.T).softmax(dim=-1)  # (N, C)
        order = probs.argsort(dim=-1, descending=True, stable=True)
        return [
            [(names[int(c)], float(row[c])) for c in ranks] for row, ranks in zip(probs, order, strict=True)
        ]

    @torch.no_grad()
    def retrieve(
        self,
        images: ImageInput | Sequence[ImageInput],
        texts: str | Sequence[str],
        *,
        rerank_k: int = 0,
    ) -> RetrievalResult:
        """Similarities of N images and M texts and the rankings both ways.

        Args:
            images: see the module docstring.
            texts: M texts.
            rerank_k: re-order the top k of every query by the ITM score (models with an ITM head: ALBEF,
                FIBER pretraining), as ``RetrievalMetric(rerank_k=k)``; 0 (default): the contrastive order.
        """
        if rerank_k < 0:
            raise ValueError(f'rerank_k must be >= 0, got {rerank_k}')
        if rerank_k:
            self._require(self.model.supports_matching, 're-rank with ITM (no image-text matching head)')
        self._require(self.model.supports_embedding, 'embed images and texts (no contrastive heads)')
        texts = self._texts(texts)
        batches = list(self.input_batches(images)) if rerank_k else None  # kept for the ITM passes
        img_emb = (
            torch.cat([self.model.encode_image(batch).float().cpu() for batch in batches])
            if batches is not None
            else self.encode_image(images)
        )
        sim = img_emb @ self.encode_text(texts).T  # (N, M), as RetrievalMetric
        if batches is None:
            scores_i2t, scores_t2i = sim, sim.T
        else:
            inputs = torch.cat(batches)

            def pair_scores(img_index: Tensor, txt_index: Tensor) -> Tensor:
                chunks = [
                    self.model.match_scores(
                        inputs[img_index[start : start + _PAIR_CHUNK].to(inputs.device)],
                        [texts[int(j)] for j in txt_index[start : start + _PAIR_CHUNK]],
                    )
                    .float()
                    .cpu()
                    for start in range(0, len(img_index), _PAIR_CHUNK)
                ]
                return torch.cat(chunks) if chunks else torch.zeros(0)

            scores_i2t, scores_t2i = rerank_both_ways(sim, rerank_k, pair_scores)
        return RetrievalResult(
            similarity=sim,
            i2t=scores_i2t.argsort(dim=1, descending=True, stable=True),
            t2i=scores_t2i.argsort(dim=1, descending=True, stable=True),
            rerank_k=int(rerank_k),
        )
