"""Helpers shared by the MaMMUT benchmark scripts (``train_step.py`` and ``generate.py``).

Not a library module: the scripts import it by name from their own folder (``python tools/benchmark/X.py``
puts that folder first on ``sys.path``). Holds the id tokenizer that feeds random captions through MaMMUT's
real ``loss`` path, the model builder (the ViT-B/16 + 12-layer decoder config with overrides), interleaved
timing, robust summaries and FLOP counting.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.config import Config
from torch.utils.flop_counter import FlopCounterMode

from toolkit.registry import MODELS
from toolkit.tokenizers import TextTokenizer

__all__ = [
    'BASE_MODEL_CONFIG',
    'import_repo_module',
    'CLIP_VOCAB_SIZE',
    'IdTokenizer',
    'build_mammut',
    'count_flops',
    'emit_json',
    'interleaved_timings',
    'log',
    'random_captions',
    'seed_everything',
    'set_threads',
    'summarize',
    'synchronize',
]

REPO = Path(__file__).resolve().parents[2]
BASE_MODEL_CONFIG = REPO / 'configs/_base_/models/mammut_vit-b16-dec12.py'
CLIP_VOCAB_SIZE = 49408  # CLIP BPE: 49406 tokens + <start_of_text> + <end_of_text>


def import_repo_module(name: str) -> Any:
    """Import ``name`` from the repository, not from this folder: the scripts ``detection.py`` and
    ``video.py`` share their names with the repository's packages, and a script's folder comes first on
    ``sys.path`` when it runs. The folder is hidden for the import; afterwards ``sys.modules`` holds the
    package."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != here]
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved


# The packages the registries' lazy `locations` import from, loaded now: later imports find them in
# sys.modules, never this folder's scripts of the same names.
for _area in ('pretrain', 'video', 'detection'):
    import_repo_module(_area)


def log(message: str) -> None:
    """Progress goes to stderr so that stdout ends with the one JSON line."""
    print(message, file=sys.stderr, flush=True)


def emit_json(result: dict[str, Any]) -> None:
    print(json.dumps(result, sort_keys=True), flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed)


def set_threads(threads: int | None) -> int:
    """``torch.set_num_threads`` (default: every core this process may use); returns the count."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    torch.set_num_threads(int(threads))
    return int(threads)


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class IdTokenizer(TextTokenizer):
    """A tokenizer whose "texts" are space-separated token ids, laid out like CLIP's.

    It lets the benchmarks feed random captions of a chosen length through MaMMUT's real ``loss`` path (which
    tokenizes ``sample.text``) at a negligible cost, and hand the very same ids to open_clip's CoCa. Ids as
    CLIP's: BOS ``vocab_size - 2``, EOS ``vocab_size - 1``, padding 0 (also a real token, as in CLIP).

    Args:
        vocab_size: V, ids 0 .. V - 1.
        context_length: default L of ``__call__``.
    """

    def __init__(self, *, vocab_size: int = CLIP_VOCAB_SIZE, context_length: int = 32) -> None:
        if vocab_size < 4:
            raise ValueError(f'vocab_size must be >= 4, got {vocab_size}')
        self._init_kwargs = {'vocab_size': vocab_size, 'context_length': context_length}
        self._vocab_size = int(vocab_size)
        self._bos_id = self._vocab_size - 2
        self._eos_id = self._vocab_size - 1
        self._pad_id = 0
        self._context_length = int(context_length)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def _pad_is_dedicated(self) -> bool:
        return False

    def encode(self, text: str) -> list[int]:
        return [int(token) for token in text.split()]

    def _decode_tokens(self, ids: list[int]) -> str:
        return ' '.join(str(token) for token in ids)


def random_captions(
    num: int, *, vocab_size: int, min_tokens: int, max_tokens: int, generator: torch.Generator
) -> list[str]:
    """``num`` captions of uniform random length in [min_tokens, max_tokens] (BOS/EOS excluded).

    Token ids are drawn from 1 .. V - 3: never padding (0), BOS or EOS.
    """
    lengths = torch.randint(min_tokens, max_tokens + 1, (num,), generator=generator).tolist()
    return [
        ' '.join(str(t) for t in torch.randint(1, vocab_size - 2, (n,), generator=generator).tolist())
        for n in lengths
    ]


def build_mammut(
    *,
    tokenizer: TextTokenizer,
    img_size: int,
    width: int,
    depth: int,
    num_heads: int,
    contrastive_only: bool = False,
) -> torch.nn.Module:
    """MaMMUT of ``configs/_base_/models/mammut_vit-b16-dec12.py``, ViT and decoder at ``width``/``depth``.

    Everything else (patch 16, cropped positional embeddings, ``every_other`` cross-attention, focal loss,
    label smoothing, average pooling) is the config's; ``embed_dim`` is set to ``width``.
    """
    cfg = Config.fromfile(str(BASE_MODEL_CONFIG)).model.to_dict()
    cfg['image_encoder'].update(img_size=img_size, embed_dim=width, depth=depth, num_heads=num_heads)
    cfg['text_decoder'].update(width=width, depth=depth, num_heads=num_heads)
    cfg.update(tokenizer=tokenizer, embed_dim=width, contrastive_only=contrastive_only)
    return MODELS.build(cfg)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (run it forward and backward) counted by ``FlopCounterMode``.

    torch's counter has no formula for the CPU flash-attention kernels ``F.scaled_dot_product_attention``
    dispatches to on CPU; they are added here with torch's own convention for the CUDA kernels (forward:
    QK^T and PV; backward: recomputed QK^T plus the four gradient products). Causal masks are not discounted.
    """
    aten = torch.ops.aten

    def sdpa_forward(q_shape, k_shape, v_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        batch, heads, len_q, dim = q_shape
        return 2 * batch * heads * len_q * k_shape[2] * (dim + v_shape[3])

    def sdpa_backward(
        grad_shape, q_shape, k_shape, v_shape, *args: Any, out_shape: Any = None, **kwargs: Any
    ) -> int:
        batch, heads, len_q, dim = q_shape
        return 2 * batch * heads * len_q * k_shape[2] * (3 * dim + 2 * v_shape[3])

    mapping: dict[Any, Any] = {}
    for name, formula in (
        ('_scaled_dot_product_flash_attention_for_cpu', sdpa_forward),
        ('_scaled_dot_product_flash_attention_for_cpu_backward', sdpa_backward),
    ):
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = formula
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def interleaved_timings(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int,
    device: torch.device,
    on_warmup_done: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, in rounds (A, B, C, then B, C, A, ...) after ``warmup`` rounds.

    Interleaving spreads slow drifts of the machine (other processes, thermal state) evenly over the
    functions compared; rotating the order each round spreads the cost of following a given function (its
    freed memory returned to the system and faulted in again, its evicted caches) evenly too.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_index in range(warmup + repeats):
        is_warmup = round_index < warmup
        if round_index == warmup and on_warmup_done is not None:
            on_warmup_done()
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            seconds = time.perf_counter() - start
            if is_warmup:
                label = f'warm-up {round_index + 1}/{warmup}'
            else:
                label = f'repeat {round_index - warmup + 1}/{repeats}'
            log(f'  {label:>16}  {name:<22} {seconds * 1e3:10.1f} ms')
            if not is_warmup:
                times[name].append(seconds)
    return times


def summarize(seconds: list[float]) -> dict[str, float]:
    """Median, min, max (ms) and the spread ``(max - min) / median`` in percent."""
    median = statistics.median(seconds)
    return {
        'median_ms': median * 1e3,
        'min_ms': min(seconds) * 1e3,
        'max_ms': max(seconds) * 1e3,
        'spread_pct': 100.0 * (max(seconds) - min(seconds)) / median if median > 0 else 0.0,
    }
