"""Batch samplers: batches drawn from one source (joint image and video training, multi-task data).

A model that takes images (C, H, W) and clips (C, T, H, W) cannot stack both in one tensor, and a batch of
captions cannot share a step with a batch of questions unless every sample has both. Joint training (TubeViT
Sec. 3.4, MaMMUT Sec. 3.3) therefore draws each batch from one source: one sub-dataset of a
``ConcatDataset``, and within it one ``modality``. Like MMDetection's ``AspectRatioBatchSampler``, this keeps
one bucket per group and yields a bucket when it is full, so the sources are mixed over an epoch in
proportion to their sizes.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

from torch.utils.data import BatchSampler, Sampler

from toolkit.registry import DATA_SAMPLERS

__all__ = ['GroupBySourceBatchSampler', 'source_groups']


def source_groups(dataset: Any) -> list[str]:
    """Group of every index: ``'{sub-dataset index}:{modality}'`` (``modality`` defaults to ``'image'``)."""
    offsets = getattr(dataset, 'cumulative_sizes', None)  # mmengine / torch ConcatDataset
    groups = []
    for index in range(len(dataset)):
        source = 0 if offsets is None else bisect.bisect_right(offsets, index)
        modality = dataset.get_data_info(index).get('modality', 'image')
        groups.append(f'{source}:{modality}')
    return groups


@DATA_SAMPLERS.register_module()
class GroupBySourceBatchSampler(BatchSampler):
    """Batches whose samples come from one sub-dataset of a ``ConcatDataset`` and share one ``modality``.

    Args:
        sampler: the index sampler (e.g. mmengine's ``DefaultSampler``); its ``dataset`` must have
            ``get_data_info(index)``.
        batch_size: samples per batch.
        drop_last: drop the incomplete batch of each group at the end of an epoch (otherwise yield it).
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool = False) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}')
        dataset = getattr(sampler, 'dataset', None)
        if dataset is None or not hasattr(dataset, 'get_data_info'):
            raise TypeError('GroupBySourceBatchSampler needs a sampler whose dataset has get_data_info()')
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self._group = source_groups(dataset)

    def __iter__(self) -> Iterator[list[int]]:
        buckets: dict[str, list[int]] = {}
        for index in self.sampler:
            bucket = buckets.setdefault(self._group[index], [])
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()
        if not self.drop_last:
            for bucket in buckets.values():
                if bucket:
                    yield bucket

    def __len__(self) -> int:
        counts: dict[str, int] = {}
        for index in self.sampler:
            group = self._group[index]
            counts[group] = counts.get(group, 0) + 1
        if self.drop_last:
            return sum(n // self.batch_size for n in counts.values())
        return sum(-(-n // self.batch_size) for n in counts.values())

    def set_epoch(self, epoch: int) -> None:
        setter: Any = getattr(self.sampler, 'set_epoch', None)
        if setter is not None:
            setter(epoch)
