"""Caption, question and search video clips with a trained MaMMUT video model from Python.

``VideoTextInferencer(config, checkpoint)`` loads the model once (:func:`toolkit.apis.init_model`: safe,
strict loading) and reads clips through the config's TEST pipeline, the one ``tools/test.py`` and
``tools/video_caption_eval.py`` use: frame sampling, decoding (by default in the decoder sandbox, with its
timeout per clip), resizing. There is no second reader: a clip captioned here gives the caption the
evaluation tool gives it with the same checkpoint and generation settings (a test checks this).

Clips may be given as a video file, a folder (its video files, sorted by name), arrays of decoded frames
(T, H, W, 3) uint8 RGB, :class:`PreparedClip` objects from :meth:`VideoTextInferencer.prepare`, or a list
mixing them. Arrays are sampled as a file of T frames would be (``SampleFrames`` on T frames; an array
holding every frame of a file gives the file's result), then go through the steps after ``DecodeVideo``.
Whatever a caller can get wrong (a missing path, a file that is not a video, an empty folder, an empty
text, a question count that does not fit) raises :class:`VideoInputError` naming the input and the problem.

The inferencer keeps no state between calls beyond the model and the pipeline; results are on the CPU
whatever the model's device.
"""

from __future__ import annotations

import dataclasses
import os
import os.path as osp
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeAlias, cast

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from torch import Tensor

from pretrain.models.mammut import MaMMUT
from toolkit.apis import init_model
from toolkit.registry import TRANSFORMS
from toolkit.video_io import VIDEO_EXTENSIONS  # what a folder is searched for
from video.datasets.transforms import DecodeVideo, PackVideoTextInputs

__all__ = [
    'VIDEO_EXTENSIONS',
    'ClipInput',
    'PreparedClip',
    'RetrievalResult',
    'VideoInputError',
    'VideoTextInferencer',
]


class VideoInputError(ValueError):
    """An input the model cannot take: ``source`` names it (a path, ``clips[2]``, ``texts[0]``,
    ``questions``) and ``reason`` says what is wrong; ``str(err)`` is ``'{source}: {reason}'``."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f'{source}: {reason}')
        self.source, self.reason = source, reason


@dataclasses.dataclass(frozen=True)
class PreparedClip:
    """A clip after the test pipeline, as the model sees it (before normalisation).

    Attributes:
        source: the file path, or ``clips[i]`` for an array.
        frames: (T, H, W, 3) uint8 RGB, sampled and resized.
        frame_inds: (T,) int64, the frames of the source that were sampled.
        total_frames: frames in the source.
        inputs: (3, T, H, W) uint8, the packed model input.
    """

    source: str
    frames: np.ndarray
    frame_inds: np.ndarray
    total_frames: int
    inputs: Tensor


ClipInput: TypeAlias = str | os.PathLike[str] | np.ndarray | PreparedClip
_Source: TypeAlias = str | tuple[str, np.ndarray] | PreparedClip  # a path, a named array or a prepared clip


@dataclasses.dataclass(frozen=True)
class RetrievalResult:
    """Clip-text similarities and rankings both ways.

    Attributes:
        similarity: (N_clips, N_texts) float32 cosine similarity of the contrastive embeddings.
        clips: the N_clips clip names (paths, or ``clips[i]`` for arrays).
        texts: the N_texts texts.
    """

    similarity: Tensor
    clips: list[str]
    texts: list[str]

    def text_ranking(self, k: int | None = None) -> Tensor:
        """(N_clips, k) int64: per clip, the indices of its ``k`` most similar texts, best first (all texts
        when ``k`` is None)."""
        k = self.similarity.shape[1] if k is None else min(k, self.similarity.shape[1])
        return self.similarity.topk(k, dim=1).indices

    def clip_ranking(self, k: int | None = None) -> Tensor:
        """(N_texts, k) int64: per text, the indices of its ``k`` most similar clips, best first."""
        k = self.similarity.shape[0] if k is None else min(k, self.similarity.shape[0])
        return self.similarity.t().topk(k, dim=1).indices

    def best_texts(self) -> list[str]:
        """The most similar text of each clip."""
        return [self.texts[int(i)] for i in self.similarity.argmax(dim=1)]


def _check_texts(texts: str | Sequence[str], name: str) -> list[str]:
    """A list of non-empty texts (a single str is a list of one); :class:`VideoInputError` otherwise."""
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items:
        raise VideoInputError(name, 'no texts given')
    for index, text in enumerate(items):
        if not isinstance(text, str) or not text.strip():
            raise VideoInputError(f'{name}[{index}]', f'expected a non-empty text, got {text!r}')
    return items


def _check_frames(frames: np.ndarray, name: str) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or 0 in frames.shape:
        raise VideoInputError(
            name, f'expected frames (T, H, W, 3) uint8 RGB, got {frames.dtype} array of shape {frames.shape}'
        )
    return frames


class VideoTextInferencer:
    """A MaMMUT video model and its config's test pipeline: captions, answers, embeddings and retrieval.

    Args:
        config: a MaMMUT video config (with a ``video_tokenizer``) or a ``Config``.
        checkpoint: its weights (``tools/train.py`` checkpoint, state dict or ``.safetensors``); ``None``
            initialises the model as the config says.
        device: torch device of the model.
        cfg_options: overrides merged into the config first, as ``--cfg-options``
            (``{'model.generation.beam_size': 2}``).

    Raises:
        ValueError: the config does not build a video model with a usable test pipeline.
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | Config,
        checkpoint: str | os.PathLike[str] | None = None,
        *,
        device: str | torch.device = 'cpu',
        cfg_options: Mapping[str, Any] | None = None,
    ) -> None:
        model = init_model(config, checkpoint, device=device, cfg_options=cfg_options)
        cfg = cast(Config, model.cfg)
        if not isinstance(model, MaMMUT) or model.video_tokenizer is None:
            raise ValueError(
                f'config {cfg.filename} builds a {type(model).__name__} without a video tokenizer; '
                'VideoTextInferencer needs a MaMMUT video model (e.g. '
                'configs/mammut/mammut_tubevit-tiny-dec4_1xb32-40e_shapes-vid.py)'
            )
        self.model = model
        self.before_decode, self.decode, self.after_decode, self.pack = self._split_pipeline(cfg)

    @staticmethod
    def _split_pipeline(cfg: Config) -> tuple[Compose, DecodeVideo, Compose, PackVideoTextInputs]:
        """The test pipeline (that of ``test_dataloader.dataset``, else ``test_pipeline``) as the steps
        before ``DecodeVideo``, ``DecodeVideo``, the steps after it and the final ``PackVideoTextInputs``."""
        dataset = (cfg.get('test_dataloader') or {}).get('dataset') or {}
        pipeline = dataset.get('pipeline') or cfg.get('test_pipeline')
        if not pipeline:
            raise ValueError(f'config {cfg.filename} has no test pipeline (test_dataloader.dataset.pipeline)')
        steps = [TRANSFORMS.build(dict(step)) for step in pipeline]
        decodes = [i for i, step in enumerate(steps) if isinstance(step, DecodeVideo)]
        if len(decodes) != 1 or not isinstance(steps[-1], PackVideoTextInputs):
            names = [type(step).__name__ for step in steps]
            raise ValueError(
                f'config {cfg.filename}: the test pipeline must hold one DecodeVideo and end with '
                f'PackVideoTextInputs, got {names}'
            )
        at = decodes[0]
        return Compose(steps[:at]), steps[at], Compose(steps[at + 1 : -1]), steps[-1]

    @property
    def device(self) -> torch.device:
        """The model's device."""
        return self.model.logit_scale.device  # a parameter: on the model's device

    # ------------------------------------------------------------------------------------------ inputs
    def _sources(self, clips: ClipInput | Sequence[ClipInput]) -> list[_Source]:
        """Expand ``clips`` into one source per clip, checking what can be checked without decoding."""
        items: list[Any]
        if isinstance(clips, np.ndarray) and clips.ndim == 5:  # (N, T, H, W, 3): N clips
            items = list(clips)
        elif isinstance(clips, str | os.PathLike | np.ndarray | PreparedClip):
            items = [clips]
        else:
            items = list(clips)
        if not items:
            raise VideoInputError('clips', 'no clips given')
        sources: list[_Source] = []
        for index, item in enumerate(items):
            if isinstance(item, PreparedClip):
                sources.append(item)
            elif isinstance(item, np.ndarray):
                sources.append((f'clips[{index}]', _check_frames(item, f'clips[{index}]')))
            elif isinstance(item, str | os.PathLike):
                sources += self._files(os.fspath(item))
            else:
                raise VideoInputError(
                    f'clips[{index}]',
                    f'expected a path, a folder or frames (T, H, W, 3), got {type(item).__name__}',
                )
        return sources

    @staticmethod
    def _files(path: str) -> list[_Source]:
        if osp.isdir(path):
            names = sorted(n for n in os.listdir(path) if osp.splitext(n)[1].lower() in VIDEO_EXTENSIONS)
            files = [osp.join(path, n) for n in names if osp.isfile(osp.join(path, n))]
            if not files:
                raise VideoInputError(
                    path, f'the folder holds no video files ({", ".join(VIDEO_EXTENSIONS)})'
                )
            return list[_Source](files)
        if not osp.exists(path):
            raise VideoInputError(path, 'no such file or folder')
        return [path]

    @staticmethod
    def _name(source: _Source) -> str:
        if isinstance(source, PreparedClip):
            return source.source
        return source if isinstance(source, str) else source[0]

    def _run_pipeline(self, source: _Source) -> PreparedClip:
        if isinstance(source, PreparedClip):
            return source
        if isinstance(source, str):
            results = self.before_decode({'video_path': source})
            results = None if results is None else self.decode(results)
        else:
            name, frames = source
            results = self.before_decode({'video_path': name, 'total_frames': len(frames)})
            if results is not None:  # what DecodeVideo writes, from the array
                imgs = frames[results['frame_inds']]
                results.update(imgs=imgs, img_shape=imgs.shape[1:3], ori_shape=imgs.shape[1:3])
        results = None if results is None else self.after_decode(results)
        if results is None:
            raise VideoInputError(self._name(source), 'the test pipeline skipped the clip')
        return PreparedClip(
            source=self._name(source),
            frames=np.asarray(results['imgs']),
            frame_inds=np.asarray(results['frame_inds'], dtype=np.int64),
            total_frames=int(results['total_frames']),
            inputs=self.pack(results)['inputs'],
        )

    def _prepare(self, source: _Source) -> PreparedClip:
        """The clip through the test pipeline; its failures (:class:`VideoDecodeError`, an ``OSError``, and
        ``ValueError`` such as a crop larger than the frames) become :class:`VideoInputError` naming it."""
        try:
            return self._run_pipeline(source)
        except VideoInputError:
            raise
        except (OSError, ValueError) as err:
            name = self._name(source)
            raise VideoInputError(name, str(err).removeprefix(f'{name}: ')) from err

    def prepare(self, clips: ClipInput | Sequence[ClipInput]) -> list[PreparedClip]:
        """Run the test pipeline on every clip (all are held in memory: for many clips pass paths to the
        other methods, which read a batch at a time).

        Raises:
            VideoInputError: naming the first clip that cannot be read, and why.
        """
        return [self._prepare(source) for source in self._sources(clips)]

    def _batches(
        self, sources: list[_Source], batch_size: int
    ) -> Iterator[tuple[Tensor, list[PreparedClip]]]:
        """Normalised model inputs (B, 3, T, H, W) on the model's device and their clips, batch by batch."""
        if batch_size < 1:
            raise ValueError(f'batch_size must be at least 1, got {batch_size}')
        for start in range(0, len(sources), batch_size):
            clips = [self._prepare(source) for source in sources[start : start + batch_size]]
            shapes = {tuple(clip.inputs.shape) for clip in clips}
            if len(shapes) > 1:
                raise VideoInputError(
                    'clips',
                    f'one batch holds clips of shapes {sorted(shapes)}; the test pipeline must '
                    'resize every clip to one size (or use batch_size=1)',
                )
            data = self.model.data_preprocessor(pseudo_collate([{'inputs': c.inputs} for c in clips]), False)
            yield data['inputs'], clips

    @staticmethod
    def _generation(method: str | None, beam_size: int | None, max_len: int | None) -> dict[str, Any]:
        options = dict(method=method, beam_size=beam_size, max_len=max_len)
        return {key: value for key, value in options.items() if value is not None}

    # ------------------------------------------------------------------------------------------ tasks
    @torch.inference_mode()
    def caption(
        self,
        clips: ClipInput | Sequence[ClipInput],
        *,
        batch_size: int = 8,
        method: str | None = None,
        beam_size: int | None = None,
        max_len: int | None = None,
    ) -> list[str]:
        """One caption per clip, in order.

        ``method`` (``'greedy'`` or ``'beam'``), ``beam_size`` and ``max_len`` override the config's
        ``model.generation`` for this call; the config's other generation keys stay.
        """
        options = self._generation(method, beam_size, max_len)
        captions: list[str] = []
        for inputs, _ in self._batches(self._sources(clips), batch_size):
            captions += self.model.generate(inputs, **options)
        return captions

    def _questions(self, questions: str | Sequence[str], count: int) -> list[str]:
        items = _check_texts(questions, 'questions')
        if isinstance(questions, str):
            return items * count
        if len(items) != count:
            raise VideoInputError(
                'questions', f'{len(items)} questions for {count} clips; give one per clip or one str for all'
            )
        return items

    @torch.inference_mode()
    def answer(
        self, clips: ClipInput | Sequence[ClipInput], questions: str | Sequence[str], *, batch_size: int = 8
    ) -> list[str]:
        """Greedy open-ended answers (at most the model's ``answer_max_len`` tokens): ``questions`` is one
        str asked of every clip or a sequence with one question per clip."""
        sources = self._sources(clips)
        asked = self._questions(questions, len(sources))
        answers: list[str] = []
        for inputs, batch in self._batches(sources, batch_size):
            answers += self.model.answer(inputs, asked[len(answers) : len(answers) + len(batch)])
        return answers

    @torch.inference_mode()
    def caption_and_answer(
        self,
        clips: ClipInput | Sequence[ClipInput],
        questions: str | Sequence[str],
        *,
        batch_size: int = 8,
        method: str | None = None,
        beam_size: int | None = None,
        max_len: int | None = None,
    ) -> tuple[list[str], list[str]]:
        """Captions (as :meth:`caption`) and answers (as :meth:`answer`) from one encoder pass per clip."""
        sources = self._sources(clips)
        asked = self._questions(questions, len(sources))
        options = self._generation(method, beam_size, max_len)
        captions: list[str] = []
        answers: list[str] = []
        for inputs, batch in self._batches(sources, batch_size):
            batch_questions = asked[len(answers) : len(answers) + len(batch)]
            caps, ans = self.model.generate_and_answer(inputs, batch_questions, **options)
            captions += caps
            answers += ans
        return captions, answers

    @torch.no_grad()  # not inference_mode: callers may modify the returned embeddings
    def _video_embeddings(self, sources: list[_Source], batch_size: int) -> tuple[Tensor, list[str]]:
        embeddings: list[Tensor] = []
        names: list[str] = []
        for inputs, batch in self._batches(sources, batch_size):
            embeddings.append(self.model.encode_image(inputs).float().cpu())
            names += [clip.source for clip in batch]
        return torch.cat(embeddings), names

    def encode_video(self, clips: ClipInput | Sequence[ClipInput], *, batch_size: int = 8) -> Tensor:
        """Contrastive embeddings (N, E) float32 of the clips, L2-normalised, on the CPU."""
        return self._video_embeddings(self._sources(clips), batch_size)[0]

    @torch.no_grad()  # not inference_mode: callers may modify the returned embeddings
    def encode_text(self, texts: str | Sequence[str], *, batch_size: int = 256) -> Tensor:
        """Contrastive embeddings (M, E) float32 of the texts, L2-normalised, on the CPU."""
        items = _check_texts(texts, 'texts')
        chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        return torch.cat([self.model.encode_text(chunk).float().cpu() for chunk in chunks])

    def retrieve(
        self, clips: ClipInput | Sequence[ClipInput], texts: str | Sequence[str], *, batch_size: int = 8
    ) -> RetrievalResult:
        """Cosine similarities (N_clips, N_texts) of the clips' and the texts' embeddings, with rankings."""
        items = _check_texts(texts, 'texts')
        sources = self._sources(clips)
        txt_emb = self.encode_text(items)
        vid_emb, names = self._video_embeddings(sources, batch_size)
        return RetrievalResult(similarity=vid_emb @ txt_emb.t(), clips=names, texts=items)
