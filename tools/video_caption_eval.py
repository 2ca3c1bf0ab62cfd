"""Caption a test split with beam search and score it: ``python tools/video_caption_eval.py CONFIG CKPT``.

Works with any captioning config of this repository, image or video (MaMMUT on COCO, Shapes World, MSRVTT):
the Runner's test loop decodes ``test_dataloader`` (images or video clips) and the model generates one caption
per sample with beam search. The COCO caption evaluation (``pretrain.evaluation.caption``: PTB tokenization,
then pycocoevalcap BLEU-4, METEOR, ROUGE-L and CIDEr-D) scores the captions against all references, and
``constant_caption_baseline`` gives the CIDEr of the best single caption predicted for every sample on the
same references, the floor a model must beat.

What it changes in the config: ``model.generation`` becomes ``method='beam'`` with ``--beam-size`` (and
``--max-len`` when given; otherwise the config's ``max_len``, other generation keys kept), after
``--cfg-options``, so these flags win; ``test_evaluator`` becomes one ``CaptionMetric`` that also writes the
predictions. The checkpoint loads as in the library API (:func:`toolkit.apis.load_weights`, the loader of
``init_model`` and ``video.apis.VideoTextInferencer``: ``weights_only`` or ``.safetensors``, strict, a
mismatch named), not through the Runner's lenient ``load_from``; the captions equal the inferencer's on the
same clips and generation settings (``tests/video/test_video_text_inferencer.py``).

Writes to the work dir (CLI > config > ``work_dirs/CONFIG_NAME``): the predictions as a COCO results JSON list
``[{"image_id": id, "caption": str}]`` (``--out`` to put them elsewhere; for videos the id is the video's
numeric id, the ``img_id`` of its samples), ``metrics.json`` (the caption scores and the constant-caption
baseline) and the Runner's logs. Prints the scores, the baseline and ``--num-show`` captions beside their
first two references. References come from the test dataset's data infos (``img_id`` and ``captions``).
"""

from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from mmengine.config import Config, DictAction
from mmengine.model import is_model_wrapper

from pretrain.evaluation.caption import constant_caption_baseline
from toolkit.apis import load_weights
from toolkit.engine import build_runner, load_config, write_metrics

SCORES = ('BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr')
PREFIX = 'caption'  # CaptionMetric's key prefix: caption/BLEU-4 ...
BASELINE_ROW = 'CIDEr of the best constant caption'


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Caption a test split with beam search and score it (COCO caption metrics)'
    )
    parser.add_argument('config', help='a captioning config (image or video)')
    parser.add_argument('checkpoint', help='checkpoint file (weights_only or .safetensors, loaded strictly)')
    parser.add_argument('--work-dir', help='where predictions, metrics.json and logs go')
    parser.add_argument('--beam-size', type=int, default=3, help='beam width (default 3)')
    parser.add_argument('--max-len', type=int, help="longest caption in tokens (default: the config's)")
    parser.add_argument('--num-show', type=int, default=5, help='captions to print beside their references')
    parser.add_argument('--out', help='predictions JSON path (default WORK_DIR/predictions_test.json)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config settings, e.g. a.b=1 c="[1,2]"'
    )
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if args.beam_size < 1:
        parser.error(f'--beam-size must be at least 1, got {args.beam_size}')
    if args.max_len is not None and args.max_len < 1:
        parser.error(f'--max-len must be at least 1, got {args.max_len}')
    if args.num_show < 0:
        parser.error(f'--num-show must be >= 0, got {args.num_show}')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def prepare_config(args: argparse.Namespace) -> tuple[Config, str]:
    """The config with beam search and a saving ``CaptionMetric``; the predictions path."""
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint} does not exist')
    cfg = load_config(
        args.config, work_dir=args.work_dir, cfg_options=args.cfg_options, launcher=args.launcher
    )
    if cfg.get('model') is None or cfg.get('test_dataloader') is None:
        raise ValueError(f'{args.config}: a captioning config needs `model` and `test_dataloader`')
    generation = dict(cfg.model.get('generation') or {})
    generation.update(method='beam', beam_size=args.beam_size)
    if args.max_len is not None:
        generation['max_len'] = args.max_len
    cfg.model.generation = generation
    cfg.load_from = None  # main() loads the checkpoint strictly (toolkit.apis.load_weights)
    pred_path = osp.abspath(args.out or osp.join(cfg.work_dir, 'predictions_test.json'))
    # A list: mmengine reads a bare dict holding a `metrics` key as the config of an Evaluator itself.
    cfg.test_evaluator = [
        dict(type='CaptionMetric', metrics=list(SCORES), prefix=PREFIX, save_path=pred_path)
    ]
    return cfg, pred_path


def dataset_references(dataset: Any) -> dict[int, list[str]]:
    """``{img_id: [reference, ...]}`` from the data infos of a caption dataset (no image or video is read)."""
    refs: dict[int, list[str]] = {}
    name = type(dataset).__name__
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        captions = info.get('captions', info.get('gt_captions'))
        if 'img_id' not in info or captions is None:
            raise KeyError(
                f'test dataset {name}: data info {index} needs "img_id" and "captions" to list the '
                f'references (it has {sorted(info)})'
            )
        refs.setdefault(int(info['img_id']), [captions] if isinstance(captions, str) else list(captions))
    if not refs:
        raise ValueError(f'test dataset {name} is empty')
    return refs


def format_report(
    metrics: Mapping[str, float],
    baseline: tuple[str, float],
    predictions: Sequence[Mapping[str, Any]],
    refs: Mapping[int, Sequence[str]],
    num_show: int,
    title: str,
) -> str:
    """The score table (fractions and x100) and ``num_show`` predictions beside two references each."""
    rows = [(name, float(metrics[name])) for name in SCORES] + [(BASELINE_ROW, baseline[1])]
    width = max(len(name) for name, _ in rows)
    rule = '-' * (width + 22)
    lines = [title, rule, f'{"metric":<{width}}  {"score":>9}  {"x100":>8}', rule]
    lines += [f'{name:<{width}}  {value:9.6f}  {100 * value:8.2f}' for name, value in rows]
    lines += [rule, f'best constant caption: "{baseline[0]}"']
    shown = list(predictions)[:num_show]
    if shown:
        lines += ['', f'{len(shown)} of {len(predictions)} predictions beside their first references:']
        id_width = max(len(str(pred['image_id'])) for pred in shown)
        for pred in shown:
            lines.append(f'  {pred["image_id"]:>{id_width}}  prediction: {pred["caption"]}')
            for ref in list(refs[int(pred['image_id'])])[:2]:
                lines.append(f'  {"":>{id_width}}  reference:  {ref}')
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg, pred_path = prepare_config(args)
    runner = build_runner(cfg)
    load_weights(runner.model.module if is_model_wrapper(runner.model) else runner.model, args.checkpoint)
    metrics = runner.test()
    if runner.rank != 0:
        return 0

    scores = {name: float(metrics[f'{PREFIX}/{name}']) for name in SCORES}
    with open(pred_path, encoding='utf-8') as handle:
        predictions = json.load(handle)
    refs = dataset_references(runner.test_dataloader.dataset)
    missing = sorted({int(p['image_id']) for p in predictions} - set(refs))[:5]
    if missing:
        raise ValueError(f'predicted ids {missing} are not in the test dataset references')
    # The same references the metric scored: those of the predicted ids.
    baseline = constant_caption_baseline({int(p['image_id']): refs[int(p['image_id'])] for p in predictions})

    all_metrics = {**metrics, 'constant_caption/CIDEr': baseline[1], 'constant_caption/caption': baseline[0]}
    metrics_path = write_metrics(all_metrics, runner.work_dir)
    generation = cfg.model.generation
    title = (
        f'{osp.basename(args.config)}: {len(predictions)} test samples, beam {generation["beam_size"]}, '
        f'max_len {generation.get("max_len", "model default")}'
    )
    print('\n' + format_report(scores, baseline, predictions, refs, args.num_show, title))
    print(f'\npredictions: {pred_path}\nmetrics:     {metrics_path}\nlogs:        {runner.log_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
