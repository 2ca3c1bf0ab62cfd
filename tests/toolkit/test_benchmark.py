"""The measuring helpers of toolkit.benchmark: FLOPs of CPU attention, the id tokenizer, summaries and peak
memory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from toolkit.benchmark.captions import IdTokenizer, random_captions
from toolkit.benchmark.flops import count_flops
from toolkit.benchmark.timing import summarize_iqr


def test_count_flops_includes_cpu_attention() -> None:
    query = torch.randn(2, 3, 5, 8, requires_grad=True)
    key, value = torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)

    def attention() -> None:
        torch.nn.functional.scaled_dot_product_attention(query, key, value).sum().backward()

    # forward: QK^T and PV (2 * 2 * B * H * Lq * Lk * D); backward: 5 products of the same size.
    assert count_flops(attention) == 7 * 2 * 2 * 3 * 5 * 7 * 8


def test_id_tokenizer_round_trip() -> None:
    tokenizer = IdTokenizer(vocab_size=100, context_length=8)
    generator = torch.Generator().manual_seed(0)
    captions = random_captions(3, vocab_size=100, min_tokens=2, max_tokens=4, generator=generator)
    txt_ids = tokenizer(captions)
    assert txt_ids.shape == (3, 8)
    assert (txt_ids[:, 0] == 98).all()
    assert tokenizer.batch_decode(txt_ids) == captions
    assert tokenizer.lengths(txt_ids).tolist() == [len(c.split()) + 2 for c in captions]


def test_summaries_and_cpu_peak() -> None:
    stats = summarize_iqr([0.001, 0.002, 0.003, 0.004, 0.005])
    assert stats['median_ms'] == pytest.approx(3.0) and stats['iqr_ms'] == pytest.approx(2.0)
    assert summarize_iqr([0.004])['iqr_ms'] == 0.0
    # In a fresh interpreter, as the benchmarks measure: here, memory freed by earlier tests may serve the
    # allocation without the resident set growing.
    code = (
        'import json, torch; from toolkit.benchmark.memory import cpu_peak_growth; '
        'print(json.dumps(cpu_peak_growth(lambda: torch.ones(64, 2**20 // 4).sum())))'  # 64 MiB, touched
    )
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    memory = json.loads(proc.stdout.strip().splitlines()[-1])
    if memory['hwm_reset']:
        assert memory['peak_growth_mib'] > 48
