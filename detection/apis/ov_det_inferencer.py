"""Open-vocabulary detection from Python: images, folders, arrays or videos in, named boxes out.

    from detection.apis import OVDetInferencer

    inferencer = OVDetInferencer('configs/fiber/...shapes-ov.py', 'work_dirs/fiber/epoch_24.pth')
    results = inferencer('photo.jpg', 'red circle . blue square', score_thr=0.3)
    for det in results[0].detections:
        print(det.name, det.score, det.bbox)  # xyxy in the image's own pixels

It works for every detector that implements
:class:`~detection.models.open_vocabulary.OpenVocabularyDetector` (FIBER, MaMMUT), through the config's test
pipeline (decoded as its loader decodes files), so its detections are those of ``tools/test.py`` on the same
images, vocabulary and checkpoint. A vocabulary is encoded (checked, chunked as the model's ``test_cfg`` says)
once and kept in a bounded cache of the inferencer's; the model keeps no state between calls.
"""

from __future__ import annotations

import json
import os
import os.path as osp
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import mmcv
import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate

from detection.apis.visualization import DetectionDrawer
from detection.models.open_vocabulary import OpenVocabularyDetector, Vocabulary, repeated_names
from toolkit.apis import init_model
from toolkit.registry import TRANSFORMS
from toolkit.video_io import VIDEO_EXTENSIONS, VideoReadError, VideoWriter, open_video

__all__ = [
    'IMAGE_EXTENSIONS',
    'Detection',
    'DetectionInputError',
    'DetectionResult',
    'OVDetInferencer',
    'parse_names',
]

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
InputType = str | os.PathLike | np.ndarray
TextsType = str | Sequence[str] | Sequence[str | Sequence[str]]


class DetectionInputError(ValueError):
    """Bad input to the inferencer (no names, an unreadable image or video, an empty folder...); the message
    names the input and the problem."""


@dataclass(frozen=True)
class Detection:
    """One box: the vocabulary name, the score and ``bbox`` ``(x1, y1, x2, y2)`` in the input's pixels."""

    name: str
    score: float
    bbox: tuple[float, float, float, float]
    label: int  # index of ``name`` in the vocabulary


@dataclass
class DetectionResult:
    """The detections of one image or video frame, best first."""

    source: str  # the file, or '<array N>' for the N-th array input
    frame: int | None  # the frame's index in a video input; None for images
    width: int
    height: int
    names: tuple[str, ...]  # the vocabulary
    detections: list[Detection] = field(default_factory=list)
    error: str | None = None  # why the input was skipped (``on_error='skip'``); then no detections

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (lists for tuples)."""
        out = asdict(self)
        out['names'] = list(self.names)
        out['detections'] = [dict(d, bbox=list(d['bbox'])) for d in out['detections']]
        return out


def parse_names(text: str) -> tuple[str, ...]:
    """Names from a ``" . "``-separated string (``"red circle . blue square"``; a final ``.`` is dropped):
    stripped, in order. Names may hold commas and other punctuation."""
    names = tuple(name.strip() for name in re.split(r'\s+\.\s+', text.strip().removesuffix('.').strip()))
    names = tuple(name for name in names if name)
    if not names:
        raise DetectionInputError(f'texts {text!r} names no category: give names separated by " . "')
    return names


@dataclass
class _Source:
    name: str
    kind: str  # 'image', 'array' or 'video'
    item: Any  # a path, or an RGB array


class OVDetInferencer:
    """Open-vocabulary detection with a FIBER or MaMMUT detector (see the module docstring).

    Args:
        config: a detector config (path or ``Config``).
        checkpoint: its weights (``tools/train.py`` checkpoint, bare state dict or ``.safetensors``);
            ``None``: as the config initialises them.
        device: torch device.
        cfg_options: config overrides, as ``--cfg-options``.
        vocab_cache_size: vocabularies whose encodings are kept (least recently used ones are dropped).
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | Config,
        checkpoint: str | os.PathLike[str] | None = None,
        *,
        device: str | torch.device = 'cpu',
        cfg_options: dict[str, Any] | None = None,
        vocab_cache_size: int = 8,
    ) -> None:
        self.model = init_model(config, checkpoint, device=device, cfg_options=cfg_options)
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        if not isinstance(self.model, OpenVocabularyDetector):
            raise TypeError(
                f'config {self.model.cfg.filename} builds a {type(self.model).__name__}, which is not an '
                'open-vocabulary detector (FIBERDetector, MaMMUTDetector)'
            )
        steps, self.loader_args = _inference_pipeline(self.model.cfg)
        self.pipeline = Compose([TRANSFORMS.build(step) for step in steps])
        self.vocab_cache_size = int(vocab_cache_size)
        self._vocab_cache: OrderedDict[tuple[str, ...], Vocabulary] = OrderedDict()
        self.vocab_encodings = 0  # vocabularies encoded so far (cache misses)

    # ------------------------------------------------------------------------------------------- vocabulary
    def vocabulary(self, names: str | Sequence[str]) -> Vocabulary:
        """The encoded vocabulary of ``names`` (a list or a ``" . "``-separated string), from the cache when
        it was seen lately; :class:`DetectionInputError` names a name the model cannot use."""
        names = parse_names(names) if isinstance(names, str) else tuple(str(name).strip() for name in names)
        if not names:
            raise DetectionInputError('no category names given')
        if repeated := repeated_names(names):
            raise DetectionInputError(f'names {repeated} appear more than once in the vocabulary')
        if (cached := self._vocab_cache.get(names)) is not None:
            self._vocab_cache.move_to_end(names)
            return cached
        try:
            vocabulary = self.model.encode_vocabulary(names)
        except ValueError as err:
            raise DetectionInputError(f'vocabulary {list(names)[:8]}: {err}') from None
        self.vocab_encodings += 1
        self._vocab_cache[names] = vocabulary
        while len(self._vocab_cache) > self.vocab_cache_size:
            self._vocab_cache.popitem(last=False)
        return vocabulary

    def clear_cache(self) -> None:
        """Forget the cached vocabularies."""
        self._vocab_cache.clear()

    # ---------------------------------------------------------------------------------------------- inputs
    def read_image(self, path: str) -> np.ndarray:
        """``path`` decoded as the config's loader decodes files: BGR uint8 (H, W, 3)."""
        try:
            with open(path, 'rb') as f:
                content = f.read()
        except OSError as err:
            raise DetectionInputError(f'image {path} cannot be read ({type(err).__name__}: {err})') from None
        return self.decode_image(content, path)

    def decode_image(self, content: bytes, name: str) -> np.ndarray:
        """The bytes of an image file decoded as the config's loader would: BGR uint8 (H, W, 3)."""
        try:
            image = mmcv.imfrombytes(
                content,
                flag=self.loader_args.get('color_type', 'color'),
                backend=self.loader_args.get('imdecode_backend', 'cv2'),
            )
        except Exception as err:  # cv2.error, PIL.UnidentifiedImageError, OSError
            raise DetectionInputError(f'image {name} cannot be read ({type(err).__name__}: {err})') from None
        if image is None or image.size == 0:
            raise DetectionInputError(f'image {name} cannot be decoded (corrupt or not an image)')
        return image

    def _sources(self, inputs: InputType | Sequence[InputType]) -> list[_Source]:
        if isinstance(inputs, (str, os.PathLike, np.ndarray)):
            inputs = [inputs]
        sources: list[_Source] = []
        for index, item in enumerate(inputs):
            if isinstance(item, np.ndarray):
                if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
                    raise DetectionInputError(
                        f'array input {index} must be RGB uint8 (H, W, 3), got {item.dtype} {item.shape}'
                    )
                sources.append(_Source(f'<array {index}>', 'array', item))
                continue
            path = os.fspath(item)
            if osp.isdir(path):
                files = sorted(
                    osp.join(path, name)
                    for name in os.listdir(path)
                    if name.lower().endswith(IMAGE_EXTENSIONS) and osp.isfile(osp.join(path, name))
                )
                if not files:
                    raise DetectionInputError(
                        f'folder {path} has no image files ({", ".join(IMAGE_EXTENSIONS)})'
                    )
                sources += [_Source(file, 'image', file) for file in files]
            elif not osp.exists(path):
                raise DetectionInputError(f'input {path} does not exist')
            elif path.lower().endswith(IMAGE_EXTENSIONS):
                sources.append(_Source(path, 'image', path))
            elif path.lower().endswith(VIDEO_EXTENSIONS):
                sources.append(_Source(path, 'video', path))
            else:
                raise DetectionInputError(
                    f'input {path}: unknown extension {osp.splitext(path)[1]!r} (images: '
                    f'{", ".join(IMAGE_EXTENSIONS)}; videos: {", ".join(VIDEO_EXTENSIONS)})'
                )
        if not sources:
            raise DetectionInputError('no inputs given')
        return sources

    def _vocabularies(self, texts: TextsType, count: int) -> list[Vocabulary]:
        """One vocabulary for every input (a string or a list of names), or one per input (a list of them)."""
        if isinstance(texts, str) or all(isinstance(t, str) for t in texts):
            return [self.vocabulary(texts)] * count  # type: ignore[arg-type]
        per_input = list(texts)
        if len(per_input) != count:
            raise DetectionInputError(
                f'{len(per_input)} vocabularies for {count} inputs: give one, or one each'
            )
        return [self.vocabulary(names) for names in per_input]  # type: ignore[arg-type]

    def _frames(
        self, sources: list[_Source], stride: int, batch_size: int, skip: bool
    ) -> Iterator[tuple[int, int | None, np.ndarray | str]]:
        """``(source index, frame index or None, BGR image)`` for every image and sampled video frame; with
        ``skip``, an unreadable input gives its error message in place of the image."""
        for index, source in enumerate(sources):
            try:
                if source.kind == 'image':
                    yield index, None, self.read_image(source.item)
                elif source.kind == 'array':
                    yield index, None, np.ascontiguousarray(source.item[..., ::-1])  # RGB -> BGR, as files
                else:
                    for indices, frames in open_video(source.item, stride=stride, batch_size=batch_size):
                        for frame_index, frame in zip(indices, frames, strict=True):
                            yield index, int(frame_index), np.ascontiguousarray(frame[..., ::-1])
            except (DetectionInputError, VideoReadError) as err:
                if not skip:
                    raise DetectionInputError(str(err)) from None
                yield index, None, str(err)

    # ---------------------------------------------------------------------------------------------- running
    @torch.inference_mode()
    def detect(
        self,
        images_bgr: Sequence[np.ndarray],
        vocabulary: Vocabulary,
        *,
        score_thr: float | None = 0.3,
        max_dets: int | None = 100,
    ) -> list[list[Detection]]:
        """Detections of decoded BGR images (one forward pass), best first, boxes in the images' pixels."""
        items = []
        for index, image in enumerate(images_bgr):
            item = self.pipeline(dict(img=np.ascontiguousarray(image), img_id=index))
            item['data_samples'].set_metainfo(dict(text=vocabulary.names, custom_entities=True))
            items.append(item)
        data = self.model.data_preprocessor(pseudo_collate(items), False)
        samples = self.model.predict_vocabulary(
            data['inputs'], data['data_samples'], vocabulary, score_thr=score_thr, max_per_img=max_dets
        )
        results = []
        for sample in samples:
            pred = sample.pred_instances.cpu()
            order = pred.scores.argsort(descending=True, stable=True)
            results.append(
                [
                    Detection(vocabulary.names[label], score, tuple(box), label)  # type: ignore[arg-type]
                    for box, score, label in zip(
                        pred.bboxes[order].tolist(),
                        pred.scores[order].tolist(),
                        pred.labels[order].tolist(),
                        strict=True,
                    )
                ]
            )
        return results

    def __call__(
        self,
        inputs: InputType | Sequence[InputType],
        texts: TextsType,
        *,
        score_thr: float | None = 0.3,
        max_dets: int | None = 100,
        batch_size: int = 1,
        frame_stride: int = 1,
        out_dir: str | os.PathLike[str] | None = None,
        categories: str | os.PathLike[str] | Sequence[dict[str, Any]] | None = None,
        on_error: str = 'raise',
    ) -> list[DetectionResult]:
        """Detect the named objects in ``inputs``.

        Args:
            inputs: an image path, an RGB uint8 array (H, W, 3), a folder (its images, sorted by name), a
                video file (every ``frame_stride``-th frame), or a list of these.
            texts: one vocabulary for all inputs (a list of names or a ``" . "``-separated string), or a list
                with one vocabulary per input (a folder's images or a video's frames share its vocabulary).
            score_thr: keep detections scoring at least this; ``None``: the config's test thresholds.
            max_dets: detections per image at most; ``None``: the config's.
            batch_size: images (or frames) per forward pass.
            frame_stride: videos: every N-th frame.
            out_dir: if given, write ``vis/`` (drawn images; one mp4 per video, at its frame rate over the
                stride), ``detections.json`` (these results, the skipped inputs, the settings) and
                ``results.json`` (COCO results: ``image_id``, ``category_id``, ``bbox`` xywh, ``score``).
            categories: for ``results.json``: a COCO categories list (``[{"id", "name"}]``) or a COCO JSON
                file (its ``categories``, and its ``images`` for the image ids of files); without it,
                category ids are vocabulary indices + 1 and image ids the results' indices.
            on_error: ``'raise'``: an unreadable input raises :class:`DetectionInputError`; ``'skip'``: it
                gives a result with its ``error`` and no detections (a video breaking part-way keeps the
                frames before).

        Returns:
            One :class:`DetectionResult` per image or sampled video frame (or skipped input), in input order.
        """
        if on_error not in ('raise', 'skip'):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if score_thr is not None and not 0.0 <= score_thr <= 1.0:
            raise DetectionInputError(f'score_thr must be in [0, 1], got {score_thr}')
        if max_dets is not None and max_dets < 1 or batch_size < 1 or frame_stride < 1:
            raise DetectionInputError('max_dets, batch_size and frame_stride must be >= 1')
        sources = self._sources(inputs)
        vocabularies = self._vocabularies(texts, len(sources))
        results: list[DetectionResult] = []
        batch: list[tuple[int, int | None, np.ndarray]] = []

        def flush() -> None:
            vocabulary = vocabularies[batch[0][0]]
            found = self.detect(
                [image for *_, image in batch], vocabulary, score_thr=score_thr, max_dets=max_dets
            )
            for (index, frame, image), detections in zip(batch, found, strict=True):
                height, width = image.shape[:2]
                results.append(
                    DetectionResult(sources[index].name, frame, width, height, vocabulary.names, detections)
                )
            batch.clear()

        for index, frame, image in self._frames(sources, frame_stride, batch_size, on_error == 'skip'):
            if batch and (
                isinstance(image, str)
                or len(batch) == batch_size
                or vocabularies[batch[0][0]] is not vocabularies[index]
            ):
                flush()
            if isinstance(image, str):  # skipped: the reason
                names = vocabularies[index].names
                results.append(DetectionResult(sources[index].name, frame, 0, 0, names, [], error=image))
            else:
                batch.append((index, frame, image))
        if batch:
            flush()
        if out_dir is not None:
            settings = dict(score_thr=score_thr, max_dets=max_dets, frame_stride=frame_stride)
            self.write(results, sources, os.fspath(out_dir), categories, settings)
        return results

    # ---------------------------------------------------------------------------------------------- outputs
    def write(
        self,
        results: list[DetectionResult],
        sources: list[_Source],
        out_dir: str,
        categories: str | os.PathLike[str] | Sequence[dict[str, Any]] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """Write the drawings and JSON files of :meth:`__call__`'s ``out_dir``."""
        vis_dir = osp.join(out_dir, 'vis')
        os.makedirs(vis_dir, exist_ok=True)
        drawer = DetectionDrawer(results[0].names if results else ())
        by_source = {source.name: source for source in sources}
        taken: set[str] = set()
        done: set[str] = set()
        for result in results:
            if result.error is not None or result.source in done:
                continue
            source = by_source[result.source]
            stem = osp.splitext(osp.basename(source.name))[0] if source.kind != 'array' else 'array'
            if source.kind == 'video':
                frames = [r for r in results if r.source == source.name and r.error is None]
                self._write_video(source.item, frames, drawer, _unique(stem, '.mp4', taken, vis_dir))
                done.add(source.name)
                continue
            image_rgb = source.item if source.kind == 'array' else mmcv.bgr2rgb(self.read_image(source.item))
            drawn = drawer(image_rgb, result.detections)
            mmcv.imwrite(mmcv.rgb2bgr(drawn), _unique(stem, '.jpg', taken, vis_dir))
        summary = dict(
            config=self.model.cfg.filename,
            checkpoint=self.checkpoint,
            **(settings or {}),
            results=[result.to_dict() for result in results if result.error is None],
            skipped=[dict(source=result.source, reason=result.error) for result in results if result.error],
        )
        with open(osp.join(out_dir, 'detections.json'), 'w') as f:
            json.dump(summary, f, indent=1)
        with open(osp.join(out_dir, 'results.json'), 'w') as f:
            json.dump(coco_results([r for r in results if r.error is None], categories), f)

    @staticmethod
    def _write_video(path: str, frames: list[DetectionResult], drawer: DetectionDrawer, out: str) -> None:
        """The video's processed frames with their detections drawn, as an mp4 at ``fps / stride``."""
        wanted = {int(result.frame or 0): result for result in frames}
        stride = int(frames[1].frame or 0) - int(frames[0].frame or 0) if len(frames) > 1 else 1
        video = open_video(path, stride=max(stride, 1), batch_size=8)
        with VideoWriter(out, video.fps / max(stride, 1)) as writer:
            for indices, images in video:
                for index, image in zip(indices, images, strict=True):
                    if (result := wanted.get(index)) is not None:
                        writer.write(drawer(np.ascontiguousarray(image), result.detections))
                if indices[-1] >= max(wanted):
                    break


def _unique(stem: str, extension: str, taken: set[str], folder: str) -> str:
    name = f'{stem}{extension}'
    number = 1
    while name in taken:
        name = f'{stem}_{number}{extension}'
        number += 1
    taken.add(name)
    return osp.join(folder, name)


def coco_results(
    results: Sequence[DetectionResult], categories: str | os.PathLike[str] | Sequence[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """The detections as a COCO results list (``bbox`` as ``[x, y, w, h]``); see ``OVDetInferencer``."""
    image_ids: dict[str, int] = {}
    if isinstance(categories, (str, os.PathLike)):
        with open(categories) as f:
            coco = json.load(f)
        image_ids = {osp.basename(image['file_name']): int(image['id']) for image in coco.get('images', [])}
        categories = coco.get('categories')
        if not categories:
            raise DetectionInputError(f'COCO file {os.fspath(categories)} has no categories')
    category_ids = {str(c['name']): int(c['id']) for c in categories} if categories else None
    out = []
    for number, result in enumerate(results):
        image_id = image_ids.get(osp.basename(result.source), number)
        for det in result.detections:
            if category_ids is None:
                category_id = det.label + 1
            elif det.name in category_ids:
                category_id = category_ids[det.name]
            else:
                raise DetectionInputError(f'name {det.name!r} is not in the given COCO categories')
            x1, y1, x2, y2 = det.bbox
            out.append(dict(image_id=image_id, category_id=category_id, bbox=[x1, y1, x2 - x1, y2 - y1],
                            score=det.score))  # fmt: skip
    return out


def _inference_pipeline(cfg: Config) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The config's test pipeline with ``LoadImageFromNDArray`` first and no annotation loading; also the
    file loader's arguments (how files are decoded)."""
    pipeline = cfg.get('test_pipeline') or cfg.get('test_dataloader', {}).get('dataset', {}).get('pipeline')
    if not pipeline:
        raise DetectionInputError(
            f'config {cfg.filename} has no test_pipeline (nor test_dataloader.dataset.pipeline)'
        )
    steps = [dict(step) for step in pipeline if not str(step['type']).endswith('LoadAnnotations')]
    loader = steps[0]
    if str(loader['type']).split('.')[-1] not in (
        'LoadImageFromFile',
        'LoadImageSafely',
        'LoadImageFromNDArray',
    ):
        raise DetectionInputError(
            f'config {cfg.filename}: the test pipeline starts with {loader["type"]!r}, not an image loader'
        )
    safe_only = ('type', 'max_pixels', 'check_complete', 'on_error')  # LoadImageSafely's checks of files
    loader_args = {k: v for k, v in loader.items() if k not in safe_only}
    steps[0] = dict(loader_args, type='LoadImageFromNDArray')
    return steps, loader_args
