"""MSR-VTT video captioning and MSRVTT-QA question answering data.

MSR-VTT (Xu et al., "MSR-VTT: A Large Video Description Dataset for Bridging Video and Language", CVPR
2016): ``train_val_videodatainfo.json`` / ``test_videodatainfo.json`` hold ``videos`` (``video_id``
``'videoN'``, numeric ``id``, ``split``, ``category``) and ``sentences`` (``video_id``, ``caption``).
MSRVTT-QA (Xu et al., "Video Question Answering via Gradually Refined Attention over Appearance and
Motion", ACM MM 2017): a JSON list of ``{answer, id, question, video_id (int), category_id}``.

Caption records hold every sentence of a video (``captions``): training samples one per visit
(``SampleCaption``), evaluation keeps all as references. Videos are checked before the first epoch
(``check_files``): a missing file fails at build, naming it, and the header of every video is read
(:func:`~video.datasets.transforms.read_frame_count`, which also stores ``total_frames`` in the record so
``SampleFrames`` need not open the file again); an unreadable one either fails the build
(``on_unreadable='raise'``) or is dropped with one warning (``'skip'``).
"""

from __future__ import annotations

import csv
import os.path as osp
import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from mmengine.dataset import BaseDataset
from mmengine.logging import MMLogger

from toolkit.registry import DATASETS
from toolkit.schema.annotations import check_msrvtt_qa, check_msrvtt_videodatainfo
from toolkit.schema.files import load_checked_json
from video.datasets.transforms import VideoDecodeError, read_frame_count

__all__ = ['MSRVTTCaptionDataset', 'MSRVTTQADataset']

_SHOW_SKIPPED = 5  # file names listed in the warning about unreadable videos


def _resolve_inside(root: str, file_name: str, ann_file: str) -> str:
    """Join ``file_name`` under ``root``, refusing absolute paths and ``..`` escapes."""
    if not file_name or osp.isabs(file_name) or '..' in file_name.replace('\\', '/').split('/'):
        raise ValueError(f'{ann_file}: video {file_name!r} escapes the data root {root!r}')
    return osp.join(root, file_name)


def _read_questions(path: str, schema_options: dict[str, Any]) -> list[dict[str, Any]]:
    """MSRVTT-QA questions as ``img_id`` (int video id), ``question``, ``answer``, ``question_id``,
    ``question_type`` (``category_id``, -1 when absent)."""
    # The schema check names the record and key of a malformed entry.
    ann = load_checked_json(path, check_msrvtt_qa, **schema_options)
    out = []
    for qa in ann:
        out.append(
            dict(
                img_id=int(qa['video_id']),
                question=str(qa['question']).strip(),
                answer=str(qa['answer']).strip(),
                question_id=qa['id'],
                question_type=qa.get('category_id', -1),
            )
        )
    return out


class _VideoDataset(BaseDataset):
    """Shared pre-flight: file checks and the unreadable-video policy."""

    def __init__(
        self,
        *,
        ann_file: str,
        data_root: str = '',
        data_prefix: dict[str, str] | None = None,
        video_ext: str = '.mp4',
        check_files: bool = True,
        on_unreadable: str = 'raise',
        schema_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if on_unreadable not in ('raise', 'skip'):
            raise ValueError(f"on_unreadable must be 'raise' or 'skip', got {on_unreadable!r}")
        self.video_ext, self.check_files, self.on_unreadable = video_ext, check_files, on_unreadable
        self.schema_options = dict(schema_options or {})  # of toolkit.schema's checks: max_caption_chars
        self.num_skipped = 0
        self.skipped: list[str] = []
        super().__init__(
            ann_file=ann_file,
            data_root=data_root,
            data_prefix=data_prefix or dict(video_path='videos/'),
            **kwargs,
        )

    def _video_path(self, name: str) -> str:
        return _resolve_inside(self.data_prefix.get('video_path', ''), name + self.video_ext, self.ann_file)

    def _preflight(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Check every distinct video once; drop (skip) or fail on (raise) the unreadable ones."""
        if not self.check_files:
            return records
        frames: dict[str, int | None] = {}
        bad: dict[str, str] = {}
        for record in records:
            path = record['video_path']
            if path in frames:
                continue
            if not osp.isfile(path):
                raise FileNotFoundError(
                    f'{self.ann_file}: video {path} (video id {record["img_id"]}) does not exist'
                )
            try:
                frames[path] = read_frame_count(path)
            except VideoDecodeError as err:
                if self.on_unreadable == 'raise':
                    raise VideoDecodeError(
                        f'{self.ann_file}: unreadable video ({err}); set on_unreadable="skip" to drop it'
                    ) from None
                frames[path] = None
                bad[path] = str(err)
        if bad:
            self.skipped = sorted(bad)
            self.num_skipped = len(bad)
            first = '; '.join(bad[p] for p in self.skipped[:_SHOW_SKIPPED])
            more = f' (and {len(bad) - _SHOW_SKIPPED} more)' if len(bad) > _SHOW_SKIPPED else ''
            MMLogger.get_current_instance().warning(
                f'{type(self).__name__} ({self.ann_file}): skipped {len(bad)} unreadable video(s) of '
                f'{len(frames)}: {first}{more}'
            )
        kept = []
        for record in records:
            count = frames[record['video_path']]
            if count is not None:
                kept.append({**record, 'total_frames': count})
        if not kept:
            raise ValueError(f'{self.ann_file}: every video is unreadable ({self.skipped[:_SHOW_SKIPPED]})')
        return kept


@DATASETS.register_module()
class MSRVTTCaptionDataset(_VideoDataset):
    """MSR-VTT videos with all their captions, one record per video.

    Record: ``video_path``, ``video_id`` ('videoN'), ``img_id`` (the JSON's numeric ``id``; caption
    metrics key on it), ``captions`` (list of str), ``category`` (int), ``modality='video'`` and, after the
    pre-flight check, ``total_frames``.

    Splits. The official 6513/497/2990 split is chosen with ``split`` from the JSON's ``split`` values
    (``'train'``, ``'validate'``, ``'test'``). The 9k/1k convention of JSFusion (Yu et al., ECCV 2018) and
    CLIP4Clip is given by ``video_list`` instead, which selects videos whatever their ``split``:

    * training on 9k: ``video_list='MSRVTT_train.9k.csv'`` (column ``video_id``) with an ``ann_file``
      holding all 10k videos (CLIP4Clip's ``MSRVTT_data.json``, or the two official files merged: the 9k
      include 2990 - 1000 videos of the official test split);
    * testing on 1k-A: ``video_list='MSRVTT_JSFUSION_test.csv'`` (columns ``video_id`` and ``sentence``):
      when the list file has a ``sentence`` column, its sentences are the only references (one per video
      in 1k-A) and the JSON's sentences of those videos are ignored.

    Args:
        ann_file: The videodatainfo JSON, relative to ``data_root``.
        data_root: Root of the data set copy.
        data_prefix: ``dict(video_path=...)``, the video folder relative to ``data_root``.
        split: A ``split`` value or a tuple of them; ignored when ``video_list`` is given.
        video_list: Optional CSV with a ``video_id`` column (and optionally ``sentence``) or a text file
            with one video id per line, relative to ``data_root``.
        qa_file: Optional MSRVTT-QA JSON (relative to ``data_root``) whose questions are attached to the
            caption records of their videos as lists ``question``, ``answer``, ``question_id`` and
            ``question_type`` (empty for a video without questions): one clip then trains captioning,
            retrieval and QA with one encoder pass (multi-task Shapes World configs).
        video_ext: Extension appended to ``video_id``.
        check_files: Pre-flight: every video exists and its header reads (see the module docstring).
        on_unreadable: ``'raise'`` fails the build naming the file; ``'skip'`` drops unreadable videos
            with one warning, counted in ``num_skipped`` and named in ``skipped``.
        **kwargs: Passed to ``mmengine.dataset.BaseDataset`` (``pipeline``, ``test_mode``, ...).
    """

    METAINFO: dict[str, Any] = dict(dataset_type='msrvtt_caption')

    def __init__(
        self,
        *,
        ann_file: str,
        data_root: str = '',
        data_prefix: dict[str, str] | None = None,
        split: str | Iterable[str] = ('train',),
        video_list: str | None = None,
        qa_file: str | None = None,
        video_ext: str = '.mp4',
        check_files: bool = True,
        on_unreadable: str = 'raise',
        **kwargs: Any,
    ) -> None:
        self.split = (split,) if isinstance(split, str) else tuple(split)
        if qa_file is not None and data_root and not osp.isabs(qa_file):
            qa_file = osp.join(data_root, qa_file)
        self.qa_file = qa_file
        if not self.split and video_list is None:
            raise ValueError('split must name at least one split (or give video_list)')
        if video_list is not None and data_root and not osp.isabs(video_list):
            video_list = osp.join(data_root, video_list)
        self.video_list = video_list
        super().__init__(
            ann_file=ann_file,
            data_root=data_root,
            data_prefix=data_prefix,
            video_ext=video_ext,
            check_files=check_files,
            on_unreadable=on_unreadable,
            **kwargs,
        )

    def _read_video_list(self) -> tuple[list[str], dict[str, list[str]] | None]:
        """Video ids of ``video_list`` in file order, and its sentences by video when it has them."""
        path = str(self.video_list)
        if not osp.isfile(path):
            raise FileNotFoundError(f'video list {path} does not exist')
        with open(path, newline='') as f:
            lines = f.read().splitlines()
        first = lines[0].strip() if lines else ''
        if not first:
            raise ValueError(f'{path}: empty video list')
        header = [c.strip() for c in next(csv.reader([first]))]
        if path.endswith('.csv') or 'video_id' in header:
            if 'video_id' not in header:
                raise ValueError(f'{path}: CSV without a "video_id" column (found {header})')
            ids: list[str] = []
            sentences: dict[str, list[str]] = defaultdict(list)
            has_sentence = 'sentence' in header
            for line, row in enumerate(csv.DictReader(lines), start=2):
                video_id = (row.get('video_id') or '').strip()
                if not video_id:
                    raise ValueError(f'{path}:{line}: empty video_id')
                if video_id not in sentences and video_id not in ids:
                    ids.append(video_id)
                if has_sentence:
                    sentence = (row.get('sentence') or '').strip()
                    if not sentence:
                        raise ValueError(f'{path}:{line}: empty sentence')
                    sentences[video_id].append(sentence)
            return ids, (dict(sentences) if has_sentence else None)
        ids = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
        return ids, None

    def load_data_list(self) -> list[dict[str, Any]]:
        # The schema check names the record and key of a malformed entry (types, unknown or duplicate
        # video ids, empty or huge captions, video ids escaping the video folder).
        ann = load_checked_json(self.ann_file, check_msrvtt_videodatainfo, **self.schema_options)
        captions: dict[str, list[str]] = defaultdict(list)
        for sentence in ann['sentences']:
            captions[sentence['video_id']].append(sentence['caption'].strip())
        videos: dict[str, dict[str, Any]] = {video['video_id']: video for video in ann['videos']}

        if self.video_list is not None:
            ids, list_sentences = self._read_video_list()
            unknown = [v for v in ids if v not in videos]
            if unknown:
                raise ValueError(
                    f'{self.video_list}: {len(unknown)} video id(s) not in {self.ann_file}, '
                    f'e.g. {unknown[:5]}'
                )
            if list_sentences is not None:
                captions = defaultdict(list, list_sentences)
        else:
            present = sorted({str(v['split']) for v in videos.values()})
            unknown_splits = [s for s in self.split if s not in present]
            if unknown_splits:
                raise ValueError(
                    f'{self.ann_file}: no video with split {unknown_splits} (splits present: {present})'
                )
            ids = [v for v, video in videos.items() if video['split'] in self.split]

        records = []
        for video_id in ids:
            if not captions.get(video_id):
                continue  # a video without a sentence has nothing to learn or evaluate
            video = videos[video_id]
            records.append(
                dict(
                    video_path=self._video_path(video_id),
                    video_id=video_id,
                    img_id=int(video['id']),
                    captions=list(captions[video_id]),
                    category=int(video.get('category', -1)),
                    modality='video',
                )
            )
        if not records:
            raise ValueError(f'{self.ann_file}: no video with captions in the selection')
        if self.qa_file is not None:
            by_video: dict[int, list[dict[str, Any]]] = defaultdict(list)
            for question in _read_questions(self.qa_file, self.schema_options):
                by_video[question['img_id']].append(question)
            for record in records:
                questions = by_video.get(record['img_id'], [])
                for key in ('question', 'answer', 'question_id', 'question_type'):
                    record[key] = [q[key] for q in questions]
        return self._preflight(records)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(ann_file={self.ann_file!r}, videos={len(self)})'


@DATASETS.register_module()
class MSRVTTQADataset(_VideoDataset):
    """MSRVTT-QA: one record per question.

    Record: ``video_path``, ``img_id`` (the integer video id), ``question``, ``answer``, ``question_id``
    (the JSON ``id``), ``question_type`` (``category_id``), ``modality='video'`` and, after the pre-flight
    check, ``total_frames``.

    Args:
        ann_file: The MSRVTT-QA JSON (``train_qa.json``, ``val_qa.json``, ``test_qa.json``).
        data_root, data_prefix, video_ext, check_files, on_unreadable: As :class:`MSRVTTCaptionDataset`
            (``num_skipped`` counts videos, not questions).
        video_name: Format of the file name of an integer video id (``'video{}'`` -> ``video7.mp4``).
        question_pattern: Keep only the questions this regex finds (``re.search``), e.g. one kind of
            question for a focused fine-tuning or evaluation.
    """

    METAINFO: dict[str, Any] = dict(dataset_type='msrvtt_qa')

    def __init__(
        self,
        *,
        ann_file: str,
        data_root: str = '',
        data_prefix: dict[str, str] | None = None,
        video_ext: str = '.mp4',
        video_name: str = 'video{}',
        question_pattern: str | None = None,
        check_files: bool = True,
        on_unreadable: str = 'raise',
        **kwargs: Any,
    ) -> None:
        if '{}' not in video_name:
            raise ValueError(f'video_name must contain "{{}}" for the video id, got {video_name!r}')
        self.video_name = video_name
        try:
            self.question_pattern = None if question_pattern is None else re.compile(question_pattern)
        except re.error as err:
            raise ValueError(f'question_pattern {question_pattern!r} is not a valid regex: {err}') from None
        super().__init__(
            ann_file=ann_file,
            data_root=data_root,
            data_prefix=data_prefix,
            video_ext=video_ext,
            check_files=check_files,
            on_unreadable=on_unreadable,
            **kwargs,
        )

    def load_data_list(self) -> list[dict[str, Any]]:
        records = []
        for question in _read_questions(self.ann_file, self.schema_options):
            if self.question_pattern is not None and not self.question_pattern.search(question['question']):
                continue
            video_id = question['img_id']
            records.append(
                dict(
                    video_path=self._video_path(self.video_name.format(video_id)),
                    **question,
                    modality='video',
                )
            )
        if not records:
            selection = (
                '' if self.question_pattern is None else f' matching {self.question_pattern.pattern!r}'
            )
            raise ValueError(f'{self.ann_file}: no questions{selection}')
        return self._preflight(records)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(ann_file={self.ann_file!r}, questions={len(self)})'
