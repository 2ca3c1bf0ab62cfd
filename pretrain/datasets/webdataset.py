"""Image-text pairs streamed from WebDataset tar shards (the format of open_clip, img2dataset and LAION).

Format (webdataset's): a shard is a POSIX tar file; a sample is the run of consecutive members that share a
key, the member path up to the first dot of its base name (``000123.jpg``, ``000123.txt``,
``000123.json`` are the image, caption and metadata of sample ``000123``). Shards are named by brace
patterns, ``shards/cc3m-{000000..000099}.tar`` or ``{a,b}``; ``pipe:CMD`` reads a shard from the standard
output of ``CMD`` (e.g. ``pipe:aws s3 cp s3://bucket/x.tar -``), so object stores stream without a local
copy (the command is split like a shell would, but runs without one: no pipes or redirections; a non-zero
exit status marks the shard as corrupt, since a failed download looks like a truncated stream). Every shard
is read once, front to back, with ``tarfile`` in stream mode (no seeks); ``.tar.gz`` / ``.tgz`` shards are
gunzipped on the way. Shards are named, read and written by :mod:`pretrain.datasets.tar_shards`.

Why a dataset of its own instead of a map-style one: a web-scale corpus has no per-file index to sample
from, and reading tar members in order is the only access that is fast on object stores. The price is that
the stream itself must be split, shuffled and counted:

* **Split.** Each epoch the shard list is permuted with ``(seed, epoch)``, identically on every process;
  process ``rank`` takes every ``world``-th shard, and DataLoader worker ``w`` every ``num_workers``-th of
  those (``split_by='shard'``), so no sample is read twice. That needs at least ``world * num_workers``
  shards (an idle reader cannot fill its share; the error says so). With fewer shards,
  ``split_by='sample'`` lets every reader read every shard and keep every ``world * num_workers``-th
  sample (exact, but each reader reads all the data).
* **Epoch length and lock step.** DDP ranks must run the same number of iterations, or the rank that runs
  out first leaves the others waiting in an all-reduce. With the sample count known (``num_samples``, or
  open_clip's ``sizes.json`` beside the shards, which ``tools/data/make_webdataset.py`` writes), every
  process yields exactly ``len(self) = ceil(num_samples / world)`` samples a epoch, split evenly over its
  workers; these shares do not depend on the rank, so every rank forms the same number of batches. A
  reader whose shards hold fewer samples than its share (a skipped sample, a truncated shard, unequal
  shards) tops up by reading its shards again from the start; one with more stops at its share. With equal
  shards whose number is a multiple of ``world * num_workers`` (what the writer makes) the shares are the
  natural counts and every sample is seen exactly once a epoch. Without a known count the stream is
  yielded as it comes and ``len()`` raises: train with ``IterBasedTrainLoop`` then.
* **Shuffle.** Shard order changes every epoch (deterministically: ``seed`` + epoch); an optional buffer of
  ``shuffle_buffer`` samples per reader mixes samples across neighbouring shards. The epoch is counted by
  the dataset itself (shared memory, so it works with and without persistent workers); the
  ``SetDatasetEpochHook`` in the configs sets it from the runner, so a resumed run reshuffles as the
  uninterrupted one did (a resume inside an epoch starts that epoch's stream over).
* **Corrupt samples.** An image that is undecodable, truncated or a decompression bomb (the checks of
  :class:`toolkit.transforms.LoadImageSafely`), a missing or empty caption, bad UTF-8, bad JSON, a truncated
  or unreadable shard: ``on_error='skip'`` records the sample with :func:`toolkit.skips.record_skip` (kind
  ``'webdataset'``, source ``shard:key``) and goes on, keeping every sample before a truncation;
  ``on_error='raise'`` raises :class:`WebDatasetError` naming the shard and the member.

Records are those of :class:`~pretrain.datasets.image_text.ImageCaptionDataset` with the image already
decoded: ``img`` (H, W, 3) uint8 BGR, ``img_shape``, ``ori_shape``, ``img_id``, ``captions``, plus
``wds_shard`` and ``wds_key``. Decoding happens here, not in a transform, because only here are the shard
and member known for the skip ledger and the error; pipelines therefore start after the image loading step.
Captions: the ``.txt`` member (required); a ``.json`` member's ``captions`` list, when present, gives all
captions of the image (Shapes World and COCO have five) and its ``img_id`` the id.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os.path as osp
import posixpath
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import mmcv
from mmengine.dataset import Compose
from mmengine.dist import get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log
from torch.utils.data import IterableDataset, get_worker_info

from pretrain.datasets.tar_shards import (
    TarGroup,
    WebDatasetError,
    braceexpand,
    iter_tar_groups,
    read_sizes,
    reader_shares,
)
from toolkit.registry import DATASETS, HOOKS
from toolkit.skips import record_skip
from toolkit.transforms import DEFAULT_MAX_PIXELS, image_header, incomplete_reason

__all__ = ['SetDatasetEpochHook', 'WebDataset']

IMAGE_EXTS = ('jpg', 'jpeg', 'png', 'webp', 'bmp')


# ----------------------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------------------


def _stable_id(key: str) -> int:
    """An integer image id from a sample key: the number itself for numeric keys (img2dataset's), else a
    63-bit hash (models compare ids to find other captions of the same image)."""
    base = posixpath.basename(key)
    if base.isdigit():
        return int(base)
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), 'big') >> 1


@DATASETS.register_module()
class WebDataset(IterableDataset[Any]):
    """Streams image-caption samples from WebDataset tar shards (see the module docstring for the format,
    splitting, epoch length and error policy).

    Args:
        shards: brace pattern(s) of the shard files relative to ``data_root`` (or ``pipe:`` commands).
        data_root: prefix of relative shard paths; ``--cfg-options ...dataset.data_root=DIR`` retargets.
        pipeline: transforms after image loading (``Resize``, ``SampleCaption``, ``PackImageTextInputs``).
        num_samples: samples in all shards; None: from ``sizes.json`` beside the shards, if there.
        split_by: ``'shard'`` (each reader its own shards) or ``'sample'`` (every reader reads every shard
            and keeps every ``world * num_workers``-th sample; for fewer shards than readers).
        shuffle_shards: permute the shard order every epoch with ``(seed, epoch)``.
        shuffle_buffer: samples a reader holds to shuffle across shards (0: off; open_clip uses ~1,000).
        seed: seed of both shuffles.
        on_error: ``'skip'`` (record in the skip ledger and go on) or ``'raise'`` (:class:`WebDatasetError`).
        image_exts: member extensions tried for the image, in order.
        caption_ext, meta_ext: members of the caption (UTF-8 text) and of the optional JSON metadata.
        max_pixels, check_complete: as in :class:`toolkit.transforms.LoadImageSafely`: images whose header
            declares more pixels (decompression bombs) or whose end is missing are corrupt samples.
        color_type, imdecode_backend: as in ``LoadImageFromFile`` (BGR uint8 by default, like it).
        rank, world_size: override the process position (tests); None: from ``torch.distributed``.
        test_mode: accepted for config compatibility; streams have no separate test behaviour.
    """

    METAINFO: dict[str, Any] = dict(dataset_type='webdataset')

    def __init__(
        self,
        *,
        shards: str | Sequence[str],
        data_root: str = '',
        pipeline: Sequence[dict[str, Any] | Callable[..., Any]] = (),
        num_samples: int | None = None,
        split_by: str = 'shard',
        shuffle_shards: bool = True,
        shuffle_buffer: int = 0,
        seed: int = 0,
        on_error: str = 'skip',
        image_exts: Sequence[str] = IMAGE_EXTS,
        caption_ext: str = 'txt',
        meta_ext: str = 'json',
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        check_complete: bool = True,
        color_type: str = 'color',
        imdecode_backend: str = 'cv2',
        rank: int | None = None,
        world_size: int | None = None,
        test_mode: bool = False,
    ) -> None:
        if split_by not in ('shard', 'sample'):
            raise ValueError(f"split_by must be 'shard' or 'sample', got {split_by!r}")
        if on_error not in ('skip', 'raise'):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if shuffle_buffer < 0 or (num_samples is not None and num_samples <= 0):
            raise ValueError(
                f'shuffle_buffer must be >= 0 and num_samples > 0, got {shuffle_buffer}, {num_samples}'
            )
        patterns = [shards] if isinstance(shards, str) else list(shards)
        self.shards = [
            s if s.startswith('pipe:') or not data_root else osp.join(data_root, s)
            for pattern in patterns
            for s in braceexpand(pattern)
        ]
        if not self.shards:
            raise ValueError('WebDataset: no shard given')
        self.data_root = data_root
        self.sizes = read_sizes(self.shards)
        self.num_samples = num_samples if num_samples is not None else (
            sum(self.sizes[shard] for shard in self.shards) if self.sizes is not None else None
        )  # fmt: skip
        self.split_by, self.shuffle_shards, self.shuffle_buffer = split_by, shuffle_shards, shuffle_buffer
        self.seed, self.on_error, self.test_mode = seed, on_error, test_mode
        self.image_exts = tuple(e.lower() for e in image_exts)
        self.caption_ext, self.meta_ext = caption_ext, meta_ext
        self.max_pixels, self.check_complete = max_pixels, check_complete
        self.color_type, self.imdecode_backend = color_type, imdecode_backend
        self._rank, self._world_size = rank, world_size
        self.pipeline = Compose(list(pipeline))
        # [epoch set by set_epoch, readers started since]: shared, so that forked workers see set_epoch and
        # non-persistent workers (forked afresh each epoch from the main process) see the count.
        self._epoch_state = multiprocessing.Array('q', [0, 0])

    # ------------------------------------------------------------------------------------------ sizes
    @property
    def metainfo(self) -> dict[str, Any]:
        return dict(self.METAINFO)

    def full_init(self) -> None:
        """Nothing to load up front (MMEngine's Runner calls this on every dataset)."""

    def _position(self) -> tuple[int, int]:
        rank, world = get_dist_info()
        rank = rank if self._rank is None else self._rank
        world = world if self._world_size is None else self._world_size
        if not 0 <= rank < world:
            raise ValueError(f'WebDataset: rank {rank} outside world size {world}')
        return rank, world

    def __len__(self) -> int:
        """Samples this process yields a epoch: ``ceil(num_samples / world_size)``."""
        if self.num_samples is None:
            raise TypeError(
                f'WebDataset over {len(self.shards)} shard(s) has no known length: set num_samples, or write '
                'sizes.json beside the shards (tools/data/make_webdataset.py does), or train with '
                'IterBasedTrainLoop'
            )
        return math.ceil(self.num_samples / self._position()[1])

    def set_epoch(self, epoch: int) -> None:
        """Shuffle the next epoch as epoch ``epoch`` (readers started afterwards count on from it)."""
        with self._epoch_state.get_lock():
            self._epoch_state[0], self._epoch_state[1] = int(epoch), 0

    def _start_epoch(self, num_workers: int) -> int:
        """The epoch of a reader starting now: every one of the ``num_workers`` readers of a process starts
        once a epoch (torch creates each worker's iterator eagerly), so the count advances the epoch."""
        with self._epoch_state.get_lock():
            started = int(self._epoch_state[1])
            self._epoch_state[1] = started + 1
            return int(self._epoch_state[0]) + started // num_workers

    # ------------------------------------------------------------------------------------------ iteration
    def shard_order(self, epoch: int) -> list[str]:
        """Every process's shard order of ``epoch`` (the same on all of them)."""
        order = list(self.shards)
        if self.shuffle_shards:
            random.Random(f'webdataset-shards-{self.seed}-{epoch}').shuffle(order)
        return order

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        rank, world = self._position()
        epoch = self._start_epoch(num_workers)  # now, not at the first next(): see _start_epoch
        return self.iter_reader(
            epoch=epoch, rank=rank, world_size=world, worker=worker, num_workers=num_workers
        )

    def iter_reader(
        self, *, epoch: int, rank: int, world_size: int, worker: int = 0, num_workers: int = 1
    ) -> Iterator[Any]:
        """The samples of one reader, worker ``worker`` of ``num_workers`` in process ``rank``, in ``epoch``.

        The shard split is fixed by the arguments, so tests can play every reader of a run in one process.
        """
        readers, me = world_size * num_workers, rank * num_workers + worker
        order = self.shard_order(epoch)
        if self.split_by == 'shard':
            if len(order) < readers:
                raise ValueError(
                    f'WebDataset: {len(order)} shard(s) cannot feed {world_size} process(es) x '
                    f'{num_workers} worker(s) = {readers} readers: write at least {readers} shards, use '
                    "fewer workers, or set split_by='sample'"
                )
            if len(order) % readers and me == 0 and epoch == 0:
                print_log(
                    f'WebDataset: {len(order)} shards over {readers} readers is uneven; readers top up or '
                    'stop at their share, so some samples repeat or wait for a later epoch. Write a multiple '
                    f'of {readers} equal shards for exactly-once epochs.',
                    logger='current',
                )
            mine = order[rank::world_size][worker::num_workers]
        else:
            mine = order
        share = None
        if self.num_samples is not None:
            share = reader_shares(math.ceil(self.num_samples / world_size), num_workers)[worker]
        rng = random.Random(f'webdataset-buffer-{self.seed}-{epoch}-{rank}-{worker}')
        return self._yield_share(mine, me, readers, share, rng)

    def _yield_share(
        self, shards: list[str], me: int, readers: int, share: int | None, rng: random.Random
    ) -> Iterator[Any]:
        yielded, first_pass = 0, True
        while share is None or yielded < share:
            got = 0
            for sample in self._samples(shards, me, readers, rng, record=first_pass):
                yield sample
                yielded, got = yielded + 1, got + 1
                if share is not None and yielded >= share:
                    return
            if share is None:
                return
            if not got:
                raise WebDatasetError(
                    f'WebDataset: reader {me} found no readable sample in {len(shards)} shard(s) '
                    f'({", ".join(shards[:3])}...) to fill its share of {share}'
                )
            first_pass = False  # top up from the start; its errors were recorded in the first pass

    def _samples(
        self, shards: list[str], me: int, readers: int, rng: random.Random, record: bool
    ) -> Iterator[Any]:
        for item in _shuffle(self._groups(shards, me, readers), self.shuffle_buffer, rng):
            try:
                if isinstance(item, WebDatasetError):
                    raise item
                result = self.pipeline(self.decode(item))
            except WebDatasetError as err:
                if self.on_error == 'raise':
                    raise
                if record:
                    key = err.member if isinstance(item, WebDatasetError) else item.key
                    record_skip('webdataset', f'{err.shard}:{key}', f'{err.member}: {err.reason}')
                continue
            if result is None:  # a transform filtered it out
                if record:
                    record_skip('webdataset', f'{item.shard}:{item.key}', 'the pipeline dropped the sample')
                continue
            yield result

    def _groups(self, shards: list[str], me: int, readers: int) -> Iterator[TarGroup | WebDatasetError]:
        if self.split_by == 'shard':
            for shard in shards:
                yield from iter_tar_groups(shard)
            return
        index = 0  # split_by='sample': the running sample index decides the reader, errors included
        for shard in shards:
            for item in iter_tar_groups(shard):
                if index % readers == me:
                    yield item
                index += 1

    def decode(self, group: TarGroup) -> dict[str, Any]:
        """The record of one sample (ImageCaptionDataset's keys, ``img`` decoded); WebDatasetError if it is
        corrupt."""
        members = group.members

        def fail(member: str, reason: str) -> WebDatasetError:
            return WebDatasetError.at(group.shard, member, reason)

        ext = next((e for e in self.image_exts if e in members), None)
        if ext is None:
            found = ', '.join(sorted(members))
            raise fail(group.key, f'no image member ({"/".join(self.image_exts)}); found {found}')
        image_member, data = f'{group.key}.{ext}', members[ext]
        try:  # LoadImageSafely's checks, from the header and the tail, before any pixel is decoded
            image_format, width, height = image_header(data)
        except ValueError as err:
            raise fail(image_member, str(err)) from None
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise fail(image_member, f'{width}x{height} pixels exceeds max_pixels={self.max_pixels:,}')
        reason = incomplete_reason(image_format, data) if self.check_complete else None
        if reason is not None:
            raise fail(image_member, reason)
        try:
            img = mmcv.imfrombytes(data, flag=self.color_type, backend=self.imdecode_backend)
        except Exception as err:  # cv2.error, PIL's OSError/SyntaxError, ...
            raise fail(image_member, f'image does not decode ({type(err).__name__}: {err})') from None
        if img is None or img.size == 0:
            raise fail(image_member, f'image does not decode (the {image_format} data is corrupt)')
        caption_member = f'{group.key}.{self.caption_ext}'
        if self.caption_ext not in members:
            raise fail(caption_member, 'missing caption member')
        try:
            caption = members[self.caption_ext].decode('utf-8').strip()
        except UnicodeDecodeError as err:
            raise fail(caption_member, f'caption is not valid UTF-8 ({err})') from None
        if not caption:
            raise fail(caption_member, 'empty caption')
        meta: dict[str, Any] = {}
        if self.meta_ext in members:
            meta_member = f'{group.key}.{self.meta_ext}'
            try:
                meta = json.loads(members[self.meta_ext].decode('utf-8'))
            except (UnicodeDecodeError, ValueError) as err:
                raise fail(meta_member, f'metadata is not valid UTF-8 JSON ({err})') from None
            if not isinstance(meta, dict):
                raise fail(meta_member, f'metadata must be a JSON object, got {type(meta).__name__}')
        captions = meta.get('captions')
        if not (
            isinstance(captions, list)
            and captions
            and all(isinstance(c, str) and c.strip() for c in captions)
        ):
            captions = [caption]
        img_id = meta.get('img_id')
        return dict(
            img=img,
            img_shape=img.shape[:2],
            ori_shape=img.shape[:2],
            img_id=img_id if isinstance(img_id, int) else _stable_id(group.key),
            captions=[c.strip() for c in captions],
            wds_shard=group.shard,
            wds_key=group.key,
        )

    def __repr__(self) -> str:
        return (
            f'{type(self).__name__}(shards={len(self.shards)}, num_samples={self.num_samples}, '
            f'split_by={self.split_by!r}, on_error={self.on_error!r})'
        )


def _shuffle(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """A shuffle buffer of ``size`` samples; errors pass straight through (so 'raise' raises at once)."""
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        if isinstance(item, WebDatasetError):
            yield item
        elif len(buffer) < size:
            buffer.append(item)
        else:
            index = rng.randrange(size)
            yield buffer[index]
            buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


@HOOKS.register_module()
class SetDatasetEpochHook(Hook):  # type: ignore[misc]
    """Calls ``set_epoch(runner.epoch)`` on the training set before each epoch, when it has one.

    Streaming data sets shuffle by epoch but receive no sampler call (a DataLoader over an IterableDataset
    has no sampler); without this a resumed run would reshuffle from epoch 0.
    """

    def before_train_epoch(self, runner: Any) -> None:
        setter = getattr(runner.train_loop.dataloader.dataset, 'set_epoch', None)
        if callable(setter):
            setter(runner.epoch)
