"""Smoke test of tools/benchmark/video_pipeline.py: the decode part at toy size ends with its JSON line of
ratios."""

from __future__ import annotations

import json
import math

import pytest


def test_decode_benchmark_tiny(load_benchmark, capsys: pytest.CaptureFixture[str]) -> None:
    benchmark = load_benchmark('video_pipeline')
    assert benchmark.main(['--tiny', '--num-videos', '1', '--frames', '4']) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in (
        'decode_ours_vs_mmaction2',
        'decode_ours_vs_raw_decord',
        'decode_ours_vs_mmaction2_min',
        'decode_ours_vs_raw_decord_min',
    ):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result['decode_identical'] is True  # every variant decoded the very same frames
    # The encode part (tiny ViT): one 32 x 224 x 224 clip of 735 tube tokens against one image.
    assert result['clip_tokens'] == 735
    assert result['encode_flop_ratio'] > 1 and result['encode_time_ratio'] > 0
    assert result['encode_time_over_flop_ratio'] == pytest.approx(
        result['encode_time_ratio'] / result['encode_flop_ratio'], rel=1e-2
    )
    assert isinstance(result['decode_targets_met'], bool)
    assert list(result['decode']['per_frames']) == ['4']  # explicit options win over --tiny's
    row = result['decode']['per_frames']['4']
    assert set(row['variants']) == {'ours_decord', 'ours_pyav', 'mmaction2', 'raw_decord'}
    for stats in row['variants'].values():
        assert stats['min_ms'] <= stats['median_ms'] <= stats['max_ms'] and stats['clips_per_s'] > 0
    assert row['ours_vs_mmaction2'] == pytest.approx(
        row['variants']['ours_decord']['clips_per_s'] / row['variants']['mmaction2']['clips_per_s']
    )


def test_parts_are_selectable(load_benchmark) -> None:
    benchmark = load_benchmark('video_pipeline')
    assert benchmark.parse_args([]).part == 'both'  # decode and encode side by side by default
    assert benchmark.parse_args(['--part', 'encode']).part == 'encode'
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--part', 'nothing'])
