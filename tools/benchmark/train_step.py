"""Training-step cost of MaMMUT's two passes against its contrastive pass alone and open_clip's CoCa, and of
ALBEF's and BEiT-3's pretraining steps.

``python tools/benchmark/train_step.py [--batch-size 8] [--img-size 224] [--width 768] [--depth 12] ...``

One process, one data batch and one optimizer recipe (AdamW) for three models; their steps (forward,
backward, optimizer step) run interleaved in rounds (A, B, C, then B, C, A, ...: the order rotates so that no
model always follows the same one) after warm-up rounds, and each model's FLOPs of one forward + backward are
counted with ``torch.utils.flop_counter.FlopCounterMode``:

1. ``two_pass``: MaMMUT (Kuo et al., TMLR 2023, Sec. 3) with both passes, contrastive and generative
   (``contrastive_only=False``), through ``MaMMUT.loss``;
2. ``contrastive``: the same model with ``contrastive_only=True`` (no cross-attention, no captioning);
3. ``coca``: open_clip's ``CoCa`` (Yu et al., 2022) at random init with ``open_clip.CoCaLoss``
   (caption + contrastive, weights 1 and 1);
4. ``albef``: ALBEF (Li et al., 2021) of ``configs/albef/albef_vit-b16-bert-base_8xb64-30e_cc3m.py`` through
   ``ALBEF.loss``: ITC against 65,536-entry queues with momentum distillation, ITM on hard negatives, MLM
   (the momentum model's forward passes included); BERT vocabulary (30,522);
5. ``beit3``: BEiT-3 (Wang et al., 2023) of ``configs/_base_/models/beit3_base-patch16-224.py``, one masked
   data modeling step through ``BEiT3.loss`` (the batch split into image, text and pair groups; the VQ-KD
   tokenizer's forward makes the visual targets); SentencePiece vocabulary (64,010).

``--methods`` picks ``mammut`` (models 1-3), ``albef`` and/or ``beit3`` (all by default).

Defaults follow the issue's targets: ViT-B/16 at 224 px, a 12-layer decoder (width 768, 12 heads,
cross-attention in the 6 odd layers), batch 8, fp32 on CPU, CLIP vocabulary (49408), context 32; captions are
random token ids of 8 to 20 tokens (COCO captions average about 11 words). ``--width``/``--depth`` set the ViT
and the decoder together (heads = width / 64, as in ViT-B).

CoCa at matched widths and depths: our decoder has N layers, cross-attention in M of them. CoCa splits its
text side into a unimodal (causal) text tower and a multimodal decoder whose every layer cross-attends, so
CoCa gets N - M unimodal + M multimodal layers, same width, heads, vocabulary and context. Note that each
open_clip multimodal layer is a self-attention block AND a cross-attention block, each with its own MLP: its
M multimodal layers hold 2M MLPs where ours hold M. The vision tower is open_clip's CoCa ViT (class token,
attentional pooler with 256 queries, the decoder cross-attends to 255 of them) at the same width/depth.

Printed per model: median step time, GFLOP per step, achieved GFLOP/s; then one JSON line with the numbers,
``time_ratio_two_pass_vs_contrastive`` (median of the per-round ratios, robust to drifts of a shared
machine), ``flop_ratio_two_pass_vs_contrastive``, ``time_over_flop_ratio`` (target <= 1.05: the second pass
costs no more than its arithmetic) and ``flops_per_s_ratio_ours_vs_coca`` (two-pass MaMMUT's achieved FLOP/s
over CoCa's, target >= 1.0), with a boolean per target. ``--profile`` prints torch.profiler tables of one
step of the two MaMMUT variants to stderr.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.structures import BaseDataElement
from torch import Tensor, nn

from pretrain.benchmark import build_mammut
from toolkit.benchmark.captions import CLIP_VOCAB_SIZE, IdTokenizer, random_captions
from toolkit.benchmark.flops import count_flops
from toolkit.benchmark.timing import (
    emit_json,
    interleaved_timings,
    log,
    seed_everything,
    set_threads,
    summarize,
)
from toolkit.registry import MODELS
from toolkit.tokenizers import TextTokenizer

__all__ = ['TrainStep', 'build_coca', 'main', 'parse_args']

REPO = Path(__file__).resolve().parents[2]
MAMMUT_CONFIG = REPO / 'configs/_base_/models/mammut_vit-b16-dec12.py'

TIME_OVER_FLOP_TARGET = 1.05
FLOPS_PER_S_TARGET = 1.0
TINY = dict(
    batch_size=2, img_size=32, width=64, depth=2, repeats=2, warmup=1, vocab_size=512, context_length=16
)


class TrainStep:
    """One optimizer step of ``model``: ``loss_fn()`` -> total loss, backward, ``AdamW.step``."""

    def __init__(
        self, *, model: nn.Module, loss_fn: Callable[[], Tensor], lr: float, weight_decay: float
    ) -> None:
        self.model = model.train()
        self.loss_fn = loss_fn
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def __call__(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def forward_backward(self) -> None:
        """What the FLOPs are counted on: the loss and its backward (AdamW is element-wise, uncounted)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_fn().backward()
        self.optimizer.zero_grad(set_to_none=True)


def build_coca(
    *,
    img_size: int,
    width: int,
    depth: int,
    num_heads: int,
    cross_layers: int,
    vocab_size: int,
    context_length: int,
) -> nn.Module:
    """open_clip ``CoCa`` at random init: ``depth - cross_layers`` unimodal + ``cross_layers`` multimodal.

    Vision: open_clip's CoCa ViT (class token, 256-query attentional pooler) at ``width``/``depth``.
    """
    import open_clip

    vision_cfg = dict(
        image_size=img_size,
        patch_size=16,
        width=width,
        layers=depth,
        head_width=width // num_heads,
        attentional_pool=True,  # open_clip's CoCa configs: 256-query attentional pooler
        attn_pooler_queries=256,
        attn_pooler_heads=num_heads,
        output_tokens=True,
    )
    text_cfg = dict(
        context_length=context_length,
        vocab_size=vocab_size,
        width=width,
        heads=num_heads,
        layers=depth - cross_layers,
        embed_cls=True,
        output_tokens=True,
        pad_id=0,
    )
    multimodal_cfg = dict(
        context_length=context_length,
        vocab_size=vocab_size,
        width=width,
        heads=num_heads,
        layers=cross_layers,
        attn_pooler_heads=num_heads,
    )
    return open_clip.CoCa(
        embed_dim=width, multimodal_cfg=multimodal_cfg, text_cfg=text_cfg, vision_cfg=vision_cfg, pad_id=0
    )


def build_albef(
    *, tokenizer: TextTokenizer, img_size: int, width: int, depth: int, num_heads: int
) -> nn.Module:
    """ALBEF of ``configs/albef/albef_vit-b16-bert-base_8xb64-30e_cc3m.py`` at random init: ViT and BERT at
    ``width``/``depth`` (half the BERT layers fuse, as ALBEF's 6 + 6), the paper's 65,536-entry queues
    (filled by the warm-up rounds), momentum model and losses."""
    cfg = Config.fromfile(
        str(REPO / 'configs/albef/albef_vit-b16-bert-base_8xb64-30e_cc3m.py')
    ).model.to_dict()
    cfg['image_encoder'].update(img_size=img_size, embed_dim=width, depth=depth, num_heads=num_heads)
    cfg['image_encoder'].update(drop_path_rate=0.0)
    cfg['text_encoder'].update(
        hidden_size=width,
        num_layers=depth,
        num_text_layers=depth // 2,
        num_heads=num_heads,
        ffn_dim=4 * width,
    )
    cfg.update(tokenizer=tokenizer, text_pretrained=None, mask_token_id=None)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def build_beit3(
    *, tokenizer: TextTokenizer, img_size: int, width: int, depth: int, num_heads: int
) -> nn.Module:
    """BEiT-3 of ``configs/_base_/models/beit3_base-patch16-224.py`` for one masked-data-modeling step: the
    Multiway Transformer (VL experts in the top 3 layers) and the BEiT v2 VQ-KD tokenizer that makes the
    visual targets, both at ``width``/``depth``, random init (the tokenizer's forward is part of the cost)."""
    cfg = Config.fromfile(str(REPO / 'configs/_base_/models/beit3_base-patch16-224.py')).model.to_dict()
    shape = dict(img_size=img_size, embed_dim=width, depth=depth, num_heads=num_heads)
    cfg['backbone'].update(shape, ffn_dim=4 * width, num_vl_layers=min(3, depth), drop_path_rate=0.0)
    cfg['backbone'].update(vocab_size=tokenizer.vocab_size + 1)
    cfg['visual_target'].update(shape, checkpoint=None)
    cfg.update(tokenizer=tokenizer, mask_token_id=None)
    return MODELS.build(cfg)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--width', type=int, default=768, help='ViT and decoder width')
    parser.add_argument('--depth', type=int, default=12, help='ViT and decoder depth')
    parser.add_argument('--vocab-size', type=int, default=CLIP_VOCAB_SIZE)
    parser.add_argument('--context-length', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=5, help='timed rounds (each runs every model once)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: all cores)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--lr', type=float, default=1e-4)
    parser.add_argument('--weight-decay', type=float, default=0.05)
    parser.add_argument('--no-coca', action='store_true', help='skip the CoCa baseline')
    parser.add_argument(
        '--methods',
        nargs='+',
        default=['mammut', 'albef', 'beit3'],
        choices=['mammut', 'albef', 'beit3'],
        help='mammut: the two-pass / contrastive-only / CoCa comparison; albef: ALBEF (ITC + ITM + MLM); '
        'beit3: a BEiT-3 masked-data-modeling step',
    )
    parser.add_argument('--bert-vocab-size', type=int, default=30522, help="ALBEF's vocabulary (BERT's)")
    parser.add_argument('--beit3-vocab-size', type=int, default=64010, help="BEiT-3's (SentencePiece 64k)")
    parser.add_argument('--profile', action='store_true', help='torch.profiler tables of the MaMMUT steps')
    parser.add_argument('--tiny', action='store_true', help='a seconds-long run at toy size (smoke test)')
    args = parser.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    if args.repeats < 1 or args.warmup < 0:
        parser.error('--repeats must be >= 1 and --warmup >= 0')
    return args


def _make_data(
    args: argparse.Namespace, tokenizer: IdTokenizer, device: torch.device, vocab_size: int | None = None
) -> dict[str, Any]:
    vocab_size = vocab_size or args.vocab_size
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=generator)
    max_tokens = min(20, args.context_length - 2)
    captions = random_captions(
        args.batch_size,
        vocab_size=vocab_size,
        min_tokens=min(8, max_tokens),
        max_tokens=max_tokens,
        generator=generator,
    )
    return {
        'images': images.to(device),
        # distinct images (ALBEF's ITM draws its negatives among the other images)
        'samples': [BaseDataElement(text=caption, img_id=index) for index, caption in enumerate(captions)],
        'txt_ids': tokenizer(captions).to(device),
    }


def _mammut_step(model: nn.Module, data: dict[str, Any], args: argparse.Namespace) -> TrainStep:
    def loss_fn() -> Tensor:
        losses = model(data['images'], data['samples'], mode='loss')
        return sum(value for key, value in losses.items() if 'loss' in key)  # MMEngine's rule

    return TrainStep(model=model, loss_fn=loss_fn, lr=args.lr, weight_decay=args.weight_decay)


def _coca_step(model: nn.Module, data: dict[str, Any], args: argparse.Namespace) -> TrainStep:
    import open_clip

    criterion = open_clip.CoCaLoss(caption_loss_weight=1.0, clip_loss_weight=1.0, pad_id=0)

    def loss_fn() -> Tensor:
        out = model(data['images'], data['txt_ids'])
        clip_loss, caption_loss = criterion(
            out['image_features'], out['text_features'], out['logits'], out['labels'], out['logit_scale']
        )
        return clip_loss + caption_loss

    return TrainStep(model=model, loss_fn=loss_fn, lr=args.lr, weight_decay=args.weight_decay)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _profile(steps: dict[str, TrainStep]) -> None:
    from torch.profiler import ProfilerActivity, profile

    for name in [name for name in steps if name != 'coca']:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            steps[name]()
        log(f'\n=== torch.profiler: one {name} step, top ops by self CPU time ===')
        log(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=25))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    device = torch.device(args.device)
    num_heads = max(1, args.width // 64)
    tokenizer = IdTokenizer(vocab_size=args.vocab_size, context_length=args.context_length)
    data = _make_data(args, tokenizer, device)
    shape = dict(img_size=args.img_size, width=args.width, depth=args.depth, num_heads=num_heads)

    steps: dict[str, TrainStep] = {}
    cross_layers = 0
    if 'mammut' in args.methods:
        seed_everything(args.seed)
        two_pass = build_mammut(MAMMUT_CONFIG, tokenizer=tokenizer, contrastive_only=False, **shape).to(
            device
        )
        steps['two_pass'] = _mammut_step(two_pass, data, args)
        seed_everything(args.seed)
        contrastive = build_mammut(MAMMUT_CONFIG, tokenizer=tokenizer, contrastive_only=True, **shape).to(
            device
        )
        steps['contrastive'] = _mammut_step(contrastive, data, args)
        cross_layers = len(two_pass.text_decoder.cross_layers)
        if not args.no_coca:
            seed_everything(args.seed)
            coca = build_coca(
                cross_layers=cross_layers,
                vocab_size=args.vocab_size,
                context_length=args.context_length,
                **shape,
            ).to(device)
            steps['coca'] = _coca_step(coca, data, args)
    if 'albef' in args.methods:
        bert_vocab = min(args.bert_vocab_size, args.vocab_size) if args.tiny else args.bert_vocab_size
        bert_tokenizer = IdTokenizer(vocab_size=bert_vocab, context_length=args.context_length)
        bert_data = _make_data(args, bert_tokenizer, device, vocab_size=bert_vocab)  # same seed: same lengths
        seed_everything(args.seed)
        albef = build_albef(tokenizer=bert_tokenizer, **shape).to(device)
        steps['albef'] = _mammut_step(albef, bert_data, args)
    if 'beit3' in args.methods:
        spm_vocab = min(args.beit3_vocab_size, args.vocab_size) if args.tiny else args.beit3_vocab_size
        spm_tokenizer = IdTokenizer(vocab_size=spm_vocab - 1, context_length=args.context_length)  # + [MASK]
        spm_data = _make_data(args, spm_tokenizer, device, vocab_size=spm_vocab - 1)
        seed_everything(args.seed)
        beit3 = build_beit3(tokenizer=spm_tokenizer, **shape).to(device)
        steps['beit3'] = _mammut_step(beit3, spm_data, args)

    log(
        f'train step: batch {args.batch_size}, {args.img_size} px, width {args.width}, depth {args.depth} '
        f'({cross_layers} cross-attention layers), {num_heads} heads, vocab {args.vocab_size}, '
        f'context {args.context_length}, fp32, {device}, {threads} threads'
    )
    for name, step in steps.items():
        log(f'  {name:<12} {_num_params(step.model) / 1e6:8.1f} M trainable parameters')

    flops: dict[str, int] = {}

    def count_all() -> None:  # after warm-up: every lazy buffer (AdamW state, caches) exists
        for name, step in steps.items():
            seed_everything(args.seed)
            flops[name] = count_flops(step.forward_backward)
            log(f'  FLOPs of one {name} forward + backward: {flops[name] / 1e9:.2f} GFLOP')

    seed_everything(args.seed)
    times = interleaved_timings(
        dict(steps), repeats=args.repeats, warmup=args.warmup, device=device, on_warmup_done=count_all
    )
    if not flops:  # warmup == 0
        count_all()
    if args.profile:
        _profile(steps)

    results: dict[str, Any] = {}
    print(f'{"model":<12} {"step ms (median)":>16} {"min":>9} {"max":>9} {"GFLOP":>9} {"GFLOP/s":>9}')
    for name in steps:
        stats = summarize(times[name])
        gflop = flops[name] / 1e9
        gflops_per_s = gflop / (stats['median_ms'] / 1e3)
        params_m = _num_params(steps[name].model) / 1e6
        results[name] = {**stats, 'gflop': gflop, 'gflop_per_s': gflops_per_s, 'params_m': params_m}
        print(
            f'{name:<12} {stats["median_ms"]:16.1f} {stats["min_ms"]:9.1f} {stats["max_ms"]:9.1f} '
            f'{gflop:9.2f} {gflops_per_s:9.2f}'
        )

    summary: dict[str, Any] = {
        'config': {
            'batch_size': args.batch_size,
            'img_size': args.img_size,
            'width': args.width,
            'depth': args.depth,
            'cross_attn_layers': cross_layers,
            'num_heads': num_heads,
            'vocab_size': args.vocab_size,
            'context_length': args.context_length,
            'device': str(device),
            'threads': threads,
            'repeats': args.repeats,
            'warmup': args.warmup,
        },
        'models': results,
    }
    if 'two_pass' in steps:
        paired = [a / b for a, b in zip(times['two_pass'], times['contrastive'], strict=True)]
        time_ratio = statistics.median(paired)
        flop_ratio = flops['two_pass'] / flops['contrastive']
        summary.update(
            time_ratio_two_pass_vs_contrastive=time_ratio,
            time_ratio_of_medians=results['two_pass']['median_ms'] / results['contrastive']['median_ms'],
            time_ratio_of_mins=results['two_pass']['min_ms'] / results['contrastive']['min_ms'],
            flop_ratio_two_pass_vs_contrastive=flop_ratio,
            time_over_flop_ratio=time_ratio / flop_ratio,
        )
        summary['time_over_flop_target_met'] = summary['time_over_flop_ratio'] <= TIME_OVER_FLOP_TARGET
        print(
            f'two-pass / contrastive: time x{time_ratio:.3f} (median of per-round ratios), '
            f'FLOPs x{flop_ratio:.3f}, time/FLOP ratio {summary["time_over_flop_ratio"]:.3f} '
            f'(target <= {TIME_OVER_FLOP_TARGET})'
        )
    if 'coca' in steps:
        ratio = results['two_pass']['gflop_per_s'] / results['coca']['gflop_per_s']
        summary['flops_per_s_ratio_ours_vs_coca'] = ratio
        summary['flops_per_s_target_met'] = ratio >= FLOPS_PER_S_TARGET
        print(f'achieved FLOP/s, two-pass MaMMUT / CoCa: {ratio:.3f} (target >= {FLOPS_PER_S_TARGET})')
    emit_json(summary)
    return 0


if __name__ == '__main__':
    sys.exit(main())
