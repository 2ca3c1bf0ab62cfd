"""Smoke tests of tools/benchmark/train_step.py and generate.py: both scripts run at toy size and end with a
JSON line of their numbers."""

from __future__ import annotations

import json
import math

import pytest


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_train_step_tiny(load_benchmark, capsys: pytest.CaptureFixture[str]) -> None:
    train_step = load_benchmark('train_step')
    assert train_step.main(['--tiny', '--threads', '1']) == 0
    result = _last_json(capsys.readouterr().out)
    for key in (
        'time_ratio_two_pass_vs_contrastive',
        'flop_ratio_two_pass_vs_contrastive',
        'time_over_flop_ratio',
        'flops_per_s_ratio_ours_vs_coca',
    ):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert isinstance(result['time_over_flop_target_met'], bool)
    assert isinstance(result['flops_per_s_target_met'], bool)
    assert set(result['models']) == {'two_pass', 'contrastive', 'coca', 'albef', 'beit3'}
    for stats in result['models'].values():
        assert stats['min_ms'] <= stats['median_ms'] <= stats['max_ms']
        assert stats['gflop'] > 0 and stats['gflop_per_s'] > 0
    # The generative pass adds arithmetic: cross-attention, a causal pass through every layer, the LM head.
    assert result['flop_ratio_two_pass_vs_contrastive'] > 1.2
    assert result['time_over_flop_ratio'] == pytest.approx(
        result['time_ratio_two_pass_vs_contrastive'] / result['flop_ratio_two_pass_vs_contrastive']
    )
    assert result['config']['cross_attn_layers'] == 1  # 'every_other' in a 2-layer decoder
    # ALBEF runs its encoders twice (online and momentum) and the fusion layers on up to 4B pairs
    assert result['models']['albef']['gflop'] > result['models']['contrastive']['gflop']


def test_generate_tiny(load_benchmark, capsys: pytest.CaptureFixture[str]) -> None:
    generate = load_benchmark('generate')
    assert generate.main(['--tiny', '--threads', '1']) == 0
    out = capsys.readouterr().out
    result = _last_json(out)
    assert result['identical'] is True
    assert 'identical: True' in out
    assert math.isfinite(result['speedup_greedy']) and result['speedup_greedy'] > 0
    assert math.isfinite(result['speedup_beam']) and result['speedup_beam'] > 0
    assert set(result['variants']) == {'greedy_cached', 'greedy_uncached', 'beam_cached', 'beam_uncached'}
