"""Training prompts for grounding detectors: which category names an image's prompt lists, in which order.

GLIP (Li et al., CVPR 2022, Sec. 3.1 and App. C.1) and FIBER (Dou et al., NeurIPS 2022; ``od_to_grounding``
of microsoft/FIBER with ``RANDOM_SAMPLE_NEG``) build a detection prompt per training image from the names of
the categories present (positives) and randomly drawn absent ones (negatives), in random order, so that
neither the position of a name in the prompt nor its neighbours tell the answer; with a long vocabulary (LVIS)
only a sample fits into the text encoder.

What differs from mmdet's ``RandomSamplingNegPos``: names come from the sample's ``text`` (the data set's
vocabulary, e.g. base categories only) rather than a label-map file; labels are re-indexed into the new list;
the token budget is counted with the model's tokenizer (a ``TOKENIZERS`` config) instead of a Hugging Face
hub tokenizer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mmcv.transforms import BaseTransform

from detection.vocabulary import SEPARATOR, clean_name
from toolkit.registry import TOKENIZERS, TRANSFORMS

__all__ = ['SampleGroundingNames']

_GT_KEYS = ('gt_bboxes', 'gt_bboxes_labels', 'gt_ignore_flags', 'gt_masks')


@TRANSFORMS.register_module()
class SampleGroundingNames(BaseTransform):
    """Pick and order the names of one training prompt; re-index the box labels into it.

    Positives (names of the image's boxes) come first, in random order, then random negatives, until
    ``max_names`` names or ``max_tokens`` prompt tokens; the kept names are then shuffled (``shuffle``).
    Positives that do not fit drop their boxes (GLIP does the same).

    Args:
        max_names: most names in a prompt; ``None`` = the whole vocabulary.
        max_tokens: most prompt tokens (BOS/EOS included); needs ``tokenizer``. ``None`` = no token limit.
        tokenizer: a ``TOKENIZERS`` config, the model's, to count tokens.
        separator: the text between two names (the model's).
        shuffle: put the kept names in random order (else vocabulary order).

    Required keys: ``text`` (the vocabulary), ``gt_bboxes_labels``. Modified: ``text`` (the prompt's names),
    ``gt_bboxes_labels`` (indices into it) and, when boxes are dropped, ``gt_bboxes``, ``gt_ignore_flags``,
    ``gt_masks``.
    """

    def __init__(
        self,
        *,
        max_names: int | None = None,
        max_tokens: int | None = None,
        tokenizer: dict[str, Any] | None = None,
        separator: str = SEPARATOR,
        shuffle: bool = True,
    ) -> None:
        if max_tokens is not None and tokenizer is None:
            raise ValueError('SampleGroundingNames: max_tokens needs the tokenizer to count tokens')
        if max_names is not None and max_names < 1:
            raise ValueError(f'SampleGroundingNames: max_names must be >= 1, got {max_names}')
        self.max_names = max_names
        self.max_tokens = max_tokens
        self.tokenizer = TOKENIZERS.build(tokenizer) if tokenizer is not None else None
        self.separator = separator
        self.shuffle = shuffle
        self._cost: dict[str, int] = {}  # tokens of ' name' + separator, per name

    def _tokens(self, name: str) -> int:
        if name not in self._cost:
            assert self.tokenizer is not None
            text = f' {clean_name(name)}{self.separator.rstrip()}'  # a name inside a caption, with its mark
            self._cost[name] = len(self.tokenizer.encode(text))
        return self._cost[name]

    def transform(self, results: dict[str, Any]) -> dict[str, Any]:
        vocabulary = results.get('text')
        if vocabulary is None or isinstance(vocabulary, str):
            raise ValueError(
                'SampleGroundingNames needs `text` as a list of category names (return_classes=True)'
            )
        vocabulary = list(vocabulary)
        labels = np.asarray(results['gt_bboxes_labels'], dtype=np.int64)
        if labels.size and labels.max() >= len(vocabulary):
            raise ValueError(
                f'SampleGroundingNames: label {labels.max()} outside a vocabulary of {len(vocabulary)}'
            )
        positives = [int(i) for i in np.random.permutation(np.unique(labels))]
        present = set(positives)
        negatives = [int(i) for i in np.random.permutation(len(vocabulary)) if int(i) not in present]
        limit = len(vocabulary) if self.max_names is None else self.max_names
        budget = None if self.max_tokens is None else self.max_tokens - 2  # BOS and EOS
        kept: list[int] = []
        for index in positives + negatives:
            if len(kept) >= limit:
                break
            if budget is not None:
                cost = self._tokens(vocabulary[index])
                if cost > budget:
                    continue
                budget -= cost
            kept.append(index)
        order = [kept[i] for i in np.random.permutation(len(kept))] if self.shuffle else sorted(kept)
        new_label = {old: new for new, old in enumerate(order)}
        keep_box = np.array([int(label) in new_label for label in labels], dtype=bool)
        if not keep_box.all():
            for key in _GT_KEYS:
                if key in results:
                    results[key] = results[key][keep_box]
            labels = labels[keep_box]
        results['gt_bboxes_labels'] = np.array([new_label[int(label)] for label in labels], dtype=np.int64)
        results['text'] = tuple(vocabulary[i] for i in order)
        return results

    def __repr__(self) -> str:
        return (
            f'{type(self).__name__}(max_names={self.max_names}, max_tokens={self.max_tokens}, '
            f'shuffle={self.shuffle})'
        )
