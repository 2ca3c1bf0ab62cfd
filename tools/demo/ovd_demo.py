"""Open-vocabulary detection demo: FIBER or MaMMUT boxes for any category names in images, folders, videos.

``python tools/demo/ovd_demo.py INPUT --texts "red circle . blue square" --config C --checkpoint K --out OUT``

The names are the detector's vocabulary (each data sample's ``text``), so names never seen in training work as
well as the trained ones (how well they are found is up to the model). The config's model decides how they are
used:

* a FIBER detector (Dou et al., NeurIPS 2022, Sec. 3.2) reads them as one prompt (GLIP's ``"a. b. c."``
  captions, Li et al., CVPR 2022, Sec. 3.1), ``--chunked-size`` names per prompt; a prompt longer than the
  tokenizer's limit is refused before any input is read. Scores are GLIP's ``sqrt(cls * centerness)``.
* a MaMMUT detector (Kuo et al., TMLR 2023, Sec. 4.3; RO-ViT, Kim et al., CVPR 2023, Sec. 3.3) embeds each
  name with its text decoder (names longer than the context are truncated by the tokenizer); the names are
  embedded once at start-up (a name that cannot be embedded is refused there), and the embeddings are cached.
  Scores are the RoI head's class probabilities (``test_cfg.rcnn``).

INPUT is an image, a folder (every .jpg/.jpeg/.png/.bmp/.webp in it, sorted by name) or a video
(.mp4/.avi/.mov/.mkv/.webm/.m4v, every ``--frame-stride``-th frame, decoded with decord, else PyAV). Writes

* ``OUT/vis/<name>.jpg`` (images) or ``OUT/vis/<name>.mp4`` (the processed frames at ``fps / stride``,
  H.264 when PyAV has libx264, else MPEG-4 Part 2), drawn with mmdet's ``DetLocalVisualizer``;
* ``OUT/detections.json``: ``{"names": [...], "score_thr", "config", "checkpoint", "skipped": [...],
  "results": [{"file", "frame" (videos only), "detections": [{"bbox": [x1, y1, x2, y2], "score",
  "label"}]}]}`` with boxes in the input's own pixels;

and prints how many images/frames were processed and the detections per name. The inference pipeline is the
config's test pipeline without annotation loading, fed decoded arrays (``LoadImageFromNDArray``);
checkpoints load with ``weights_only=True`` (:func:`toolkit.checkpoint.load_state_dict_file`).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import os
import os.path as osp
import re
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any

import mmcv
import numpy as np
import torch
from mmdet.structures import DetDataSample
from mmdet.visualization import DetLocalVisualizer
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

from toolkit.checkpoint import UnsafeCheckpointError, load_state_dict_file, strip_prefix
from toolkit.registry import MODELS, TRANSFORMS

__all__ = [
    'IMAGE_EXTENSIONS',
    'VIDEO_EXTENSIONS',
    'DemoInputError',
    'OVDetector',
    'collect_inputs',
    'main',
    'parse_args',
    'parse_texts',
]

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v')


class DemoInputError(ValueError):
    """A bad argument or an unreadable input; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------- arguments
def parse_texts(texts: str) -> tuple[str, ...]:
    """Category names from ``"a . b . c"`` or ``"a, b, c"``: stripped, duplicates dropped, order kept."""
    names = [name.strip() for name in re.split(r'[.,]', texts)]
    names = list(dict.fromkeys(name for name in names if name))
    if not names:
        raise DemoInputError(f'--texts {texts!r} names no category: give names separated by " . " or ","')
    return tuple(names)


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {number}')
    return number


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('input', help='an image, a folder of images or a video')
    parser.add_argument('--texts', required=True, help='category names, "red circle . blue square" or "a, b"')
    parser.add_argument('--config', required=True, help='detector config (a FIBER or MaMMUT detector)')
    parser.add_argument('--checkpoint', required=True, help='tools/train.py checkpoint or a bare state dict')
    parser.add_argument('--out', required=True, help='output folder (vis/ and detections.json)')
    parser.add_argument('--score-thr', type=float, default=0.3, help='keep detections scoring at least this')
    parser.add_argument('--max-dets', type=_positive_int, help="detections per image (default: the config's)")
    parser.add_argument('--device', default='cpu', help='torch device, e.g. cpu, cuda, cuda:1')
    parser.add_argument('--batch-size', type=_positive_int, default=8, help='images or frames per forward')
    parser.add_argument('--frame-stride', type=_positive_int, default=1, help='videos: every Nth frame')
    parser.add_argument(
        '--chunked-size', type=int, help='FIBER only: names per prompt (default: the config; -1: one prompt)'
    )
    parser.add_argument(
        '--skip-bad', action='store_true', help='skip unreadable images, report them at the end'
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.score_thr <= 1.0:
        parser.error(f'--score-thr must be in [0, 1], got {args.score_thr}')
    return args


def collect_inputs(path: str) -> tuple[str, list[str]]:
    """``('images', files)`` for an image or a folder, ``('video', [path])`` for a video."""
    if not osp.exists(path):
        raise DemoInputError(f'input {path} does not exist')
    if osp.isdir(path):
        files = sorted(
            osp.join(path, name)
            for name in os.listdir(path)
            if name.lower().endswith(IMAGE_EXTENSIONS) and osp.isfile(osp.join(path, name))
        )
        if not files:
            raise DemoInputError(f'folder {path} has no image files ({", ".join(IMAGE_EXTENSIONS)})')
        return 'images', files
    extension = osp.splitext(path)[1].lower()
    if extension in IMAGE_EXTENSIONS:
        return 'images', [path]
    if extension in VIDEO_EXTENSIONS:
        return 'video', [path]
    raise DemoInputError(
        f'input {path}: unknown extension {extension!r} (images: {", ".join(IMAGE_EXTENSIONS)}; '
        f'videos: {", ".join(VIDEO_EXTENSIONS)})'
    )


# ---------------------------------------------------------------------------------------------- detector
def _inference_pipeline(cfg: Config) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The config's test pipeline with ``LoadImageFromNDArray`` first and no annotation loading; also the
    loader's arguments (how files are decoded)."""
    pipeline = cfg.get('test_pipeline') or cfg.get('test_dataloader', {}).get('dataset', {}).get('pipeline')
    if not pipeline:
        raise DemoInputError(
            f'config {cfg.filename} has no test_pipeline (nor test_dataloader.dataset.pipeline)'
        )
    steps = [dict(step) for step in pipeline if not str(step['type']).endswith('LoadAnnotations')]
    loader = steps[0]
    file_loaders = ('LoadImageFromFile', 'LoadImageSafely', 'LoadImageFromNDArray')
    if str(loader['type']).split('.')[-1] not in file_loaders:
        raise DemoInputError(
            f'config {cfg.filename}: the test pipeline starts with {loader["type"]!r}, '
            'expected LoadImageFromFile'
        )
    safe_only = ('type', 'max_pixels', 'check_complete', 'on_error')  # LoadImageSafely's checks of files
    loader_args = {k: v for k, v in loader.items() if k not in safe_only}
    steps[0] = dict(loader_args, type='LoadImageFromNDArray')
    return steps, loader_args


def _palette(num: int) -> list[tuple[int, int, int]]:
    """``num`` well-separated RGB colours (golden-ratio hue steps)."""
    colours = []
    for index in range(num):
        r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.85, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def _test_cfg(cfg: Config, score_thr: float, max_dets: int | None, chunked: int | None) -> dict[str, Any]:
    """The model's ``test_cfg`` with the demo's threshold, detections per image and (FIBER) chunk size.

    Two-stage (``rcnn``, MaMMUT): the RoI head's class probabilities are the final scores, so its threshold
    becomes ``min(config, score_thr)``. Single-stage (FIBER): the head thresholds the per-pair score s before
    the final ``sqrt(s * centerness) <= sqrt(s)``, so ``min(config, score_thr ** 2)`` drops nothing that
    could reach ``score_thr``.
    """
    test_cfg = dict(cfg.model.get('test_cfg') or {})
    if 'rcnn' in test_cfg:
        rcnn = dict(test_cfg['rcnn'])
        rcnn['score_thr'] = min(float(rcnn.get('score_thr', 0.0)), score_thr)
        if max_dets is not None:
            rcnn['max_per_img'] = max_dets
        test_cfg['rcnn'] = rcnn
    else:
        test_cfg['score_thr'] = min(float(test_cfg.get('score_thr', 0.0)), score_thr**2)
        if max_dets is not None:
            test_cfg['max_per_img'] = max_dets
    if chunked is not None:
        model_type = str(cfg.model.get('type', '')).split('.')[-1]
        if model_type != 'FIBERDetector':
            raise DemoInputError(
                f'--chunked-size applies to FIBER detectors only; config {cfg.filename} builds {model_type!r}'
            )
        test_cfg['chunked_size'] = chunked
    return test_cfg


class OVDetector:
    """A FIBER or MaMMUT detector, its inference pipeline and a vocabulary: BGR arrays in, detections out.

    The names are checked through what the model offers (``encode_prompt``: FIBER, ``text_embeddings``:
    MaMMUT); both read them from the samples' ``text``, and their predicted ``labels`` index them.

    Args:
        config: config file with a ``model`` and a test pipeline.
        checkpoint: a ``tools/train.py`` checkpoint (``state_dict`` inside) or a bare state dict; loaded with
            ``weights_only=True``.
        names: the vocabulary (the category names).
        device: torch device.
        score_thr: final score threshold (FIBER: GLIP's ``sqrt(cls * centerness)``; MaMMUT: the class
            probability).
        max_dets: detections per image; ``None`` keeps the config's ``max_per_img``.
        chunked_size: FIBER only, names per prompt; ``None`` keeps the config's.
    """

    def __init__(
        self,
        *,
        config: str,
        checkpoint: str,
        names: Sequence[str],
        device: str = 'cpu',
        score_thr: float = 0.3,
        max_dets: int | None = None,
        chunked_size: int | None = None,
    ) -> None:
        if not osp.isfile(config):
            raise DemoInputError(f'config {config} does not exist')
        state_dict = load_state_dict_file(checkpoint)  # refuses anything but tensors and containers
        state_dict = strip_prefix(state_dict, 'module.')
        cfg = Config.fromfile(config)
        init_default_scope(cfg.get('default_scope', 'toolkit'))
        test_cfg = _test_cfg(cfg, score_thr, max_dets, chunked_size)
        cfg.model.test_cfg = test_cfg
        model = MODELS.build(cfg.model)
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise DemoInputError(
                f'checkpoint {checkpoint} does not fit the model of {config}: {len(missing)} missing keys '
                f'{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}'
            )
        self.model = model.to(torch.device(device)).eval()
        steps, self.loader_args = _inference_pipeline(cfg)
        self.pipeline = Compose([TRANSFORMS.build(step) for step in steps])
        self.config, self.checkpoint, self.test_cfg = config, checkpoint, test_cfg
        self.names: tuple[str, ...] = ()
        self.set_names(names)  # bad names fail here, before any input is read
        self.score_thr = score_thr
        self.max_dets = max_dets

    def set_names(self, names: Sequence[str]) -> None:
        """Make ``names`` the vocabulary, checked first (the previous one stays if they fail): FIBER, every
        prompt of ``chunked_size`` names fits the tokenizer; MaMMUT, every name embeds to a finite vector (one
        text pass for names not seen before; the model caches the embeddings)."""
        names = tuple(names)
        if not names:
            raise DemoInputError('no category names given')
        if hasattr(self.model, 'encode_prompt'):
            chunked = int(self.test_cfg.get('chunked_size', -1))
            step = chunked if chunked > 0 else len(names)
            for start in range(0, len(names), step):
                try:
                    self.model.encode_prompt(names[start : start + step])
                except ValueError as err:
                    raise DemoInputError(f'--texts: {err}') from None
        elif hasattr(self.model, 'text_embeddings'):
            try:
                finite = torch.isfinite(self.model.text_embeddings(names)).all(dim=1).tolist()
            except (ValueError, RuntimeError, TypeError) as err:  # tokenizer or text decoder errors
                raise DemoInputError(
                    f'--texts: the text decoder of {self.config} cannot embed {list(names)} '
                    f'({type(err).__name__}: {err})'
                ) from None
            if bad := [name for name, ok in zip(names, finite, strict=True) if not ok]:
                raise DemoInputError(
                    f'--texts: names {bad} embed to non-finite vectors with checkpoint {self.checkpoint} '
                    '(NaN or inf in its text decoder weights?)'
                )
        else:
            raise DemoInputError(
                f'config {self.config} builds a {type(self.model).__name__}: the demo needs an '
                'open-vocabulary detector with encode_prompt (FIBER) or text_embeddings (MaMMUT)'
            )
        self.names = names

    def read_image(self, path: str) -> np.ndarray:
        """Decode ``path`` as the config's loader would (BGR uint8); a clear error if it cannot."""
        try:
            with open(path, 'rb') as f:
                content = f.read()
        except OSError as err:
            raise DemoInputError(f'image {path} cannot be read ({type(err).__name__}: {err})') from None
        return self.decode_image(content, path)

    def decode_image(self, content: bytes, name: str) -> np.ndarray:
        """Decode the bytes of an image file as the config's loader would (BGR uint8); ``name`` (its path
        or upload name) goes into the error."""
        try:
            image = mmcv.imfrombytes(
                content,
                flag=self.loader_args.get('color_type', 'color'),
                backend=self.loader_args.get('imdecode_backend', 'cv2'),
            )
        except Exception as err:  # cv2.error, PIL.UnidentifiedImageError, OSError
            raise DemoInputError(f'image {name} cannot be read ({type(err).__name__}: {err})') from None
        if image is None or image.size == 0:
            raise DemoInputError(f'image {name} cannot be decoded (corrupt or not an image)')
        return image

    @torch.inference_mode()
    def __call__(self, images_bgr: Sequence[np.ndarray]) -> list[list[dict[str, Any]]]:
        """Detections of each image, best first: ``{'bbox': [x1, y1, x2, y2], 'score', 'label'}`` with
        boxes in the image's own pixels."""
        items = []
        for index, image in enumerate(images_bgr):
            item = self.pipeline(dict(img=np.ascontiguousarray(image), img_id=index))
            item['data_samples'].set_metainfo(dict(text=self.names, custom_entities=True))
            items.append(item)
        samples = self.model.test_step(pseudo_collate(items))
        results = []
        for image, sample in zip(images_bgr, samples, strict=True):
            pred = sample.pred_instances.cpu()
            keep = pred.scores >= self.score_thr
            order = pred.scores[keep].argsort(descending=True)
            bboxes, scores = pred.bboxes[keep][order], pred.scores[keep][order]
            labels = pred.labels[keep][order]
            if self.max_dets is not None:
                bboxes, scores, labels = (
                    bboxes[: self.max_dets],
                    scores[: self.max_dets],
                    labels[: self.max_dets],
                )
            height, width = image.shape[:2]
            bboxes[:, 0::2] = bboxes[:, 0::2].clamp(0, width)
            bboxes[:, 1::2] = bboxes[:, 1::2].clamp(0, height)
            results.append(
                [
                    dict(bbox=[round(v, 2) for v in box], score=round(score, 4), label=self.names[label])
                    for box, score, label in zip(
                        bboxes.tolist(), scores.tolist(), labels.tolist(), strict=True
                    )
                ]
            )
        return results


# ---------------------------------------------------------------------------------------------- drawing
class Drawer:
    """Boxes, names and scores on an RGB image with mmdet's ``DetLocalVisualizer``."""

    def __init__(self, names: Sequence[str]) -> None:
        self.visualizer = DetLocalVisualizer(name='ovd_demo', alpha=0.9)
        self.set_names(names)

    def set_names(self, names: Sequence[str]) -> None:
        """The names (and so the colours) of the labels drawn from now on."""
        self.names = list(names)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.visualizer.dataset_meta = dict(classes=tuple(self.names), palette=_palette(len(self.names)))

    def __call__(self, image_rgb: np.ndarray, detections: Sequence[dict[str, Any]]) -> np.ndarray:
        detections = list(detections)[::-1]  # lowest score first: the best label is drawn on top
        instances = InstanceData()
        bboxes = torch.tensor([d['bbox'] for d in detections], dtype=torch.float32).reshape(-1, 4)
        # Edges on the far border (x = width) are outside mmengine's [0, width) check: pull them in a hair.
        height, width = image_rgb.shape[:2]
        bboxes[:, 0::2] = bboxes[:, 0::2].clamp(max=width - 1e-2)
        bboxes[:, 1::2] = bboxes[:, 1::2].clamp(max=height - 1e-2)
        instances.bboxes = bboxes
        instances.scores = torch.tensor([d['score'] for d in detections], dtype=torch.float32)
        instances.labels = torch.tensor([self.index[d['label']] for d in detections], dtype=torch.long)
        sample = DetDataSample(pred_instances=instances)
        self.visualizer.line_width = max(1, round(min(image_rgb.shape[:2]) / 200))
        self.visualizer.add_datasample('ovd', image_rgb, sample, draw_gt=False, pred_score_thr=-1.0)
        return self.visualizer.get_image()


# ---------------------------------------------------------------------------------------------- video
def _decord_batches(path: str, stride: int, batch_size: int) -> tuple[float, Iterator[tuple[list[int], Any]]]:
    import decord

    reader = decord.VideoReader(path, num_threads=1)
    total, fps = len(reader), float(reader.get_avg_fps())

    def batches() -> Iterator[tuple[list[int], Any]]:
        indices = list(range(0, total, stride))
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            frames = reader.get_batch(chunk)
            yield chunk, frames.asnumpy() if hasattr(frames, 'asnumpy') else np.asarray(frames)

    return fps, batches()


def _pyav_batches(path: str, stride: int, batch_size: int) -> tuple[float, Iterator[tuple[list[int], Any]]]:
    import av

    container = av.open(path)
    if not container.streams.video:
        container.close()
        raise DemoInputError(f'video {path} has no video stream')
    stream = container.streams.video[0]
    fps = float(stream.average_rate or 0)

    def batches() -> Iterator[tuple[list[int], Any]]:
        chunk: list[int] = []
        frames: list[np.ndarray] = []
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index % stride:
                    continue
                chunk.append(index)
                frames.append(frame.to_ndarray(format='rgb24'))
                if len(chunk) == batch_size:
                    yield chunk, np.stack(frames)
                    chunk, frames = [], []
            if chunk:
                yield chunk, np.stack(frames)
        finally:
            container.close()

    return fps, batches()


def open_video(path: str, stride: int, batch_size: int) -> tuple[float, Iterator[tuple[list[int], Any]]]:
    """The video's frame rate and an iterator of (frame indices, RGB frames (B, H, W, 3)); decord if it is
    installed, else PyAV. Errors name the file."""
    try:
        import decord  # noqa: F401

        opener = _decord_batches
    except ImportError:
        opener = _pyav_batches
    try:
        fps, batches = opener(path, stride, batch_size)
    except DemoInputError:
        raise
    except Exception as err:  # decord's DECORDError, PyAV's FFmpegError subclasses, OSError
        raise DemoInputError(f'video {path} cannot be opened ({type(err).__name__}: {err})') from None
    return (fps if fps > 0 else 25.0), batches


class VideoWriter:
    """An mp4 written frame by frame with PyAV: libx264 (yuv420p) when available, else mpeg4; odd sizes
    are padded by one pixel (4:2:0 needs even ones)."""

    def __init__(self, path: str, fps: float) -> None:
        import av

        self.av = av
        self.codec = 'libx264' if self._can_encode('libx264') else 'mpeg4'
        self.path = path
        self.container = av.open(path, mode='w')
        self.rate = Fraction(fps).limit_denominator(1001)
        self.stream: Any = None

    def _can_encode(self, name: str) -> bool:
        try:
            self.av.codec.Codec(name, 'w')
        except Exception:  # av.codec.codec.UnknownCodecError
            return False
        return True

    def write(self, image_rgb: np.ndarray) -> None:
        height, width = image_rgb.shape[:2]
        pad = ((0, height % 2), (0, width % 2), (0, 0))
        image_rgb = np.pad(image_rgb, pad, mode='edge') if any(p[1] for p in pad) else image_rgb
        if self.stream is None:
            self.stream = self.container.add_stream(self.codec, rate=self.rate)
            self.stream.width, self.stream.height = image_rgb.shape[1], image_rgb.shape[0]
            self.stream.pix_fmt = 'yuv420p'
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(image_rgb), format='rgb24')
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        """Flush and close; a video with no frame written leaves no file."""
        if self.stream is None:
            try:
                self.container.close()
            finally:
                if osp.isfile(self.path):
                    os.remove(self.path)
            return
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


# ---------------------------------------------------------------------------------------------- main
def _vis_name(path: str, taken: set[str], extension: str) -> str:
    stem, source_ext = osp.splitext(osp.basename(path))
    name = f'{stem}{extension}'
    if name in taken:  # a.png and a.jpg in one folder
        name = f'{stem}_{source_ext.lstrip(".")}{extension}'
    taken.add(name)
    return name


def _run_images(files: list[str], detector: OVDetector, drawer: Drawer, args: argparse.Namespace,
                vis_dir: str, skipped: list[dict[str, str]]) -> list[dict[str, Any]]:  # fmt: skip
    results: list[dict[str, Any]] = []
    taken: set[str] = set()
    for start in range(0, len(files), args.batch_size):
        batch: list[tuple[str, np.ndarray]] = []
        for path in files[start : start + args.batch_size]:
            try:
                batch.append((path, detector.read_image(path)))
            except DemoInputError as err:
                if not args.skip_bad:
                    raise
                skipped.append(dict(file=path, reason=str(err)))
        if not batch:
            continue
        detections = detector([image for _, image in batch])
        for (path, image), dets in zip(batch, detections, strict=True):
            drawn = drawer(mmcv.bgr2rgb(image), dets)
            mmcv.imwrite(mmcv.rgb2bgr(drawn), osp.join(vis_dir, _vis_name(path, taken, '.jpg')))
            results.append(dict(file=path, detections=dets))
    return results


def _run_video(path: str, video: tuple[float, Iterator[tuple[list[int], Any]]], detector: OVDetector,
               drawer: Drawer, args: argparse.Namespace, vis_dir: str) -> list[dict[str, Any]]:  # fmt: skip
    fps, batches = video
    writer = VideoWriter(osp.join(vis_dir, _vis_name(path, set(), '.mp4')), fps / args.frame_stride)
    results: list[dict[str, Any]] = []
    try:
        while True:
            try:
                indices, frames = next(batches)
            except StopIteration:
                break
            except Exception as err:  # a corrupt stream part-way
                raise DemoInputError(
                    f'video {path}: decoding failed after {len(results)} frames ({type(err).__name__}: {err})'
                ) from None
            detections = detector([frame[..., ::-1] for frame in frames])  # RGB -> BGR, as files load
            for index, frame, dets in zip(indices, frames, detections, strict=True):
                writer.write(drawer(np.ascontiguousarray(frame), dets))
                results.append(dict(file=path, frame=int(index), detections=dets))
    finally:
        writer.close()
    if not results:
        raise DemoInputError(f'video {path} has no frames')
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo; returns what ``detections.json`` holds."""
    args = parse_args(argv)
    names = parse_texts(args.texts)
    kind, files = collect_inputs(args.input)
    skipped: list[dict[str, str]] = []
    video = None
    if kind == 'video':  # opened before the model is built: a bad file fails fast
        try:
            video = open_video(files[0], args.frame_stride, args.batch_size)
        except DemoInputError as err:
            if not args.skip_bad:
                raise
            skipped.append(dict(file=files[0], reason=str(err)))
    detector = OVDetector(
        config=args.config,
        checkpoint=args.checkpoint,
        names=names,
        device=args.device,
        score_thr=args.score_thr,
        max_dets=args.max_dets,
        chunked_size=args.chunked_size,
    )
    drawer = Drawer(names)
    vis_dir = osp.join(args.out, 'vis')
    os.makedirs(vis_dir, exist_ok=True)
    results: list[dict[str, Any]] = []
    if video is not None:
        try:
            results = _run_video(files[0], video, detector, drawer, args, vis_dir)
        except DemoInputError as err:
            if not args.skip_bad:
                raise
            skipped.append(dict(file=files[0], reason=str(err)))
    elif kind == 'images':
        results = _run_images(files, detector, drawer, args, vis_dir, skipped)
    output = dict(
        names=list(names),
        score_thr=args.score_thr,
        config=args.config,
        checkpoint=args.checkpoint,
        skipped=skipped,
        results=results,
    )
    json_path = osp.join(args.out, 'detections.json')
    with open(json_path, 'w') as f:
        json.dump(output, f, indent=1)
    _print_summary(kind, output, json_path)
    if not results:
        raise DemoInputError(f'no readable input in {args.input}: {len(skipped)} skipped (see {json_path})')
    return output


def _print_summary(kind: str, output: dict[str, Any], json_path: str) -> None:
    results = output['results']
    counts = Counter(d['label'] for r in results for d in r['detections'])
    unit = 'frames' if kind == 'video' else 'images'
    total = sum(counts.values())
    print(f'{len(results)} {unit}, {total} detections with score >= {output["score_thr"]}:')
    width = max(len(name) for name in output['names'])
    for name in output['names']:
        print(f'  {name:<{width}}  {counts.get(name, 0)}')
    if output['skipped']:
        print(f'skipped {len(output["skipped"])} unreadable inputs:')
        for item in output['skipped']:
            print(f'  {item["reason"]}')
    print(f'detections: {json_path}; drawings: {osp.join(osp.dirname(json_path), "vis")}')


if __name__ == '__main__':
    try:
        main()
    except (DemoInputError, FileNotFoundError, UnsafeCheckpointError) as error:
        sys.exit(f'ovd_demo: error: {error}')
