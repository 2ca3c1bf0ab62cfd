"""Captioning speed of MaMMUT's decoder with and without its key/value cache.

``python tools/benchmark/generate.py [--batch-size 8] [--new-tokens 32] [--beam-size 3] ...``

Decodes exactly ``--new-tokens`` tokens per image (EOS is forbidden until then: ``min_len = max_len``) with
:func:`pretrain.models.generation.generate`, greedy and beam search, each with ``use_cache=True`` (image
keys/values computed once, self-attention keys/values appended per step: one token per step through the
decoder) and ``use_cache=False`` (the whole prefix re-run through ``forward_generative`` every step). The four
variants run interleaved (after warm-up rounds); the image is encoded once beforehand and is not timed. Every
call's tokens must equal the cached call's: the script prints whether they do and exits with status 1 if not.

Model: ``configs/_base_/models/mammut_vit-b16-dec12.py`` (ViT-B/16 at 224 px, 12-layer decoder, width 768,
cross-attention in 6 layers, CLIP vocabulary) at random init, fp32, batch 8. On a 2-core CPU one uncached
beam-search call takes about a minute, so the defaults are 3 timed rounds after 1 warm-up round.

Prints the median time per variant and the speed-ups; the last stdout line is JSON with ``speedup_greedy``,
``speedup_beam`` (uncached median / cached median; target >= 3) and ``identical``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pretrain.benchmark import build_mammut
from pretrain.models.generation import generate as generate_ids
from toolkit.benchmark.captions import CLIP_VOCAB_SIZE, IdTokenizer
from toolkit.benchmark.timing import (
    emit_json,
    interleaved_timings,
    log,
    seed_everything,
    set_threads,
    summarize,
)

__all__ = ['main', 'parse_args']

MAMMUT_CONFIG = Path(__file__).resolve().parents[2] / 'configs/_base_/models/mammut_vit-b16-dec12.py'

SPEEDUP_TARGET = 3.0
TINY = dict(batch_size=2, img_size=32, width=64, depth=2, repeats=2, warmup=1, vocab_size=512, new_tokens=8)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--width', type=int, default=768, help='ViT and decoder width')
    parser.add_argument('--depth', type=int, default=12, help='ViT and decoder depth')
    parser.add_argument('--vocab-size', type=int, default=CLIP_VOCAB_SIZE)
    parser.add_argument('--new-tokens', type=int, default=32, help='tokens decoded per image')
    parser.add_argument('--beam-size', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=3, help='timed rounds (each runs every variant once)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds first')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: all cores)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--tiny', action='store_true', help='a seconds-long run at toy size (smoke test)')
    args = parser.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    if args.repeats < 1 or args.warmup < 0 or args.new_tokens < 1:
        parser.error('--repeats and --new-tokens must be >= 1, --warmup >= 0')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    device = torch.device(args.device)
    num_heads = max(1, args.width // 64)
    # The decoder needs a position for BOS plus every new token.
    tokenizer = IdTokenizer(vocab_size=args.vocab_size, context_length=max(64, args.new_tokens + 1))
    seed_everything(args.seed)
    model = build_mammut(
        MAMMUT_CONFIG,
        tokenizer=tokenizer,
        img_size=args.img_size,
        width=args.width,
        depth=args.depth,
        num_heads=num_heads,
    )
    model = model.to(device).eval()
    decoder = model.text_decoder
    images = torch.randn(
        args.batch_size, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(args.seed)
    ).to(device)
    with torch.no_grad():
        img_ctx = model.image_context(model.image_encoder(images))
    log(
        f'generation: batch {args.batch_size}, {args.img_size} px, width {args.width}, depth {args.depth} '
        f'({len(decoder.cross_layers)} cross-attention layers), vocab {args.vocab_size}, '
        f'{args.new_tokens} new tokens, beam {args.beam_size}, fp32, {device}, {threads} threads'
    )

    outputs: dict[str, list[Tensor]] = {}

    def variant(method: str, use_cache: bool) -> Any:
        name = f'{method}_{"cached" if use_cache else "uncached"}'
        outputs[name] = []

        def run() -> None:
            ids = generate_ids(
                decoder,
                img_ctx,
                method=method,
                beam_size=args.beam_size,
                max_len=args.new_tokens,
                min_len=args.new_tokens,  # EOS never wins: exactly new_tokens tokens
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=use_cache,
            )
            outputs[name].append(ids.cpu())

        return name, run

    fns = dict(variant(method, use_cache) for method in ('greedy', 'beam') for use_cache in (True, False))
    times = interleaved_timings(fns, repeats=args.repeats, warmup=args.warmup, device=device)

    expected_shape = (args.batch_size, 1 + args.new_tokens)
    identical = True
    for method in ('greedy', 'beam'):
        reference = outputs[f'{method}_cached'][0]
        runs = outputs[f'{method}_cached'] + outputs[f'{method}_uncached']
        same = reference.shape == expected_shape and all(torch.equal(ids, reference) for ids in runs)
        identical &= same
        print(f'{method}: cached and uncached tokens identical: {same} (shape {tuple(reference.shape)})')

    results = {name: summarize(seconds) for name, seconds in times.items()}
    print(f'{"variant":<18} {"median ms":>10} {"min":>10} {"max":>10} {"tokens/s":>10}')
    rows = args.batch_size * args.new_tokens
    for name, stats in results.items():
        stats['tokens_per_s'] = rows / (stats['median_ms'] / 1e3)
        print(
            f'{name:<18} {stats["median_ms"]:10.1f} {stats["min_ms"]:10.1f} {stats["max_ms"]:10.1f} '
            f'{stats["tokens_per_s"]:10.1f}'
        )
    speedup = {
        method: results[f'{method}_uncached']['median_ms'] / results[f'{method}_cached']['median_ms']
        for method in ('greedy', 'beam')
    }
    print(
        f'speed-up of the cache: greedy x{speedup["greedy"]:.2f}, '
        f'beam {args.beam_size} x{speedup["beam"]:.2f} (target >= {SPEEDUP_TARGET}); '
        f'identical outputs: {identical}'
    )
    emit_json(
        {
            'config': {
                'batch_size': args.batch_size,
                'img_size': args.img_size,
                'width': args.width,
                'depth': args.depth,
                'vocab_size': args.vocab_size,
                'new_tokens': args.new_tokens,
                'beam_size': args.beam_size,
                'device': str(device),
                'threads': threads,
                'repeats': args.repeats,
                'warmup': args.warmup,
            },
            'variants': results,
            'speedup_greedy': speedup['greedy'],
            'speedup_beam': speedup['beam'],
            'speedup_target_met': min(speedup.values()) >= SPEEDUP_TARGET,
            'identical': identical,
        }
    )
    return 0 if identical else 1


if __name__ == '__main__':
    sys.exit(main())
