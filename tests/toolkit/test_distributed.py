"""Two processes with half the batch train as one process with the whole batch: DDP and FSDP on CPU (gloo).

For MaMMUT, FIBER (coarse pretraining: ITC + ITM + MLM), ALBEF (ITC with momentum distillation and
queues, ITM, distilled MLM) and BEiT-3 (MDM and contrastive together), a tiny model trains ``ITERS``
iterations through ``toolkit.engine.build_runner``, once in this process with a global batch of ``BATCH``
and once in 2 spawned processes (``launcher='pytorch'``, gloo, MMEngine's DDP) with ``BATCH / 2`` each; a
MaMMUT also trains under FSDP (``FSDPStrategy`` through ``toolkit.distributed.build_flexible_runner``, in
float32 and with bfloat16 mixed precision). Every loss term of every iteration (the mean of the two
processes' values) and the final weights must agree.

Why the runs can agree:

* Data: ``DefaultSampler(shuffle=False)`` gives rank r the indices r, r + 2, ... so step k of the 2-process
  run sees samples {kB, ..., kB + B - 1} split over the ranks, the same set as step k of the 1-process run
  (asserted). Every loss is invariant to the order of the global batch: contrastive logits are permuted
  consistently (the gathered batch is rank 0's samples, then rank 1's), and queued features, positives by
  image id and hard-negative candidates are sets.
* Normalisation: contrastive losses average over local rows (equal on every rank) against the gathered
  batch; token / pair losses (caption, MLM, ITM, MDM) divide by the global count
  (``pretrain.models.losses.global_mean``); DDP averages the gradients. With per-process token means the two
  runs would differ by the spread of token counts between the ranks.
* Randomness: dropout and stochastic depth are off; no random augmentation (the annotations keep one caption
  per image, and there is no flip); one SGD learning rate without warm-up (SGD so that a wrong gradient
  scale shows in the weights: Adam would hide it); gradient clipping only in the FSDP runs (max norm 0.5,
  reached: it checks that FSDP clips by the norm over all shards). MaMMUT's pass order and cropped positional
  embeddings draw the same numbers on every rank (one draw per batch, same seed). Draws whose shape depends
  on the local batch are inherently per process; they are made functions of the sample instead, identical
  in both layouts: MLM / MDM text masks come from an RNG seeded by the caption's ids, BEiT-3's image masks
  and group split from a key of the image and caption, and the ITM hard negatives (FIBER, ALBEF) are the
  most probable candidate, the mode of the softmax(ITC) distribution that is normally sampled. These
  replacements are installed in both runs by :func:`_sample_keyed_randomness`.

Tolerance: float32 sums in another order (half-batch matmuls, the gradient all-reduce or reduce-scatter,
counts summed over ranks, padding to another width) differ by a few ulps per reduction. Measured over 3
steps: losses agree to <= 7e-6 (5e-7 relative), weights to <= 4e-7 (the largest differences are printed
with ``-s``). ``LOSS_RTOL`` is ~40x that; with per-process token means instead of ``global_mean`` the losses
were off by 9e-4 (MaMMUT caption, 2e-4 relative), 1.3e-3 (FIBER) and 8e-2 (ALBEF), all caught.
``WEIGHT_ATOL`` is ~25x the largest weight difference; one SGD step moves a weight by ``LR`` times its
gradient, so a gradient scaled wrongly (halved or doubled by the averaging) moves the weights of any
gradient entry above 1e-3 past it.
"""

from __future__ import annotations

import json
import os
import random
import socket
import traceback
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from toolkit.checkpoint import safe_load

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {
    'mammut': REPO / 'configs/mammut/mammut_vit-tiny-dec4_1xb32-30e_shapes-cap.py',
    'fiber': REPO / 'configs/fiber/fiber_swin-tiny-roberta-tiny_1xb32-30e_shapes-pretrain.py',
    'albef': REPO / 'configs/albef/albef_vit-tiny-bert-tiny_1xb32-20e_shapes.py',
    'beit3': REPO / 'configs/beit3/beit3_tiny-patch16-128_1xb32-12e_shapes-mdm.py',
}
METHODS = tuple(CONFIGS)
BATCH = 8  # global batch: one process with 8, or two with 4 each
ITERS = 3
IMG = 64  # 4 x 4 patches of 16 px
LR = 0.01  # plain SGD: large enough that a wrong gradient moves the weights past the tolerance
LOSS_RTOL, LOSS_ATOL = 2e-5, 1e-5  # see the module docstring
WEIGHT_RTOL, WEIGHT_ATOL = 1e-5, 1e-5
# FSDP units (the classes named in the paper-scale *_fsdp.py configs). MaMMUT: ViT blocks, and the decoder's
# self-attention and MLP (the decoder projects the image keys / values of its cross-attention outside the
# block's forward, so whole decoder blocks cannot be units). FIBER: the parts of the Swin blocks and RoBERTa
# layers that its backbone runs through their forward. See toolkit.distributed.
FSDP_BLOCKS = {
    'mammut': ['ViTBlock', 'SelfAttention', 'Mlp'],
    'fiber': [
        'ShiftWindowMSA',
        'FFN',
        'PatchMerging',
        'GatedCrossAttention',
        'RobertaIntermediate',
        'RobertaOutput',
    ],
    'albef': ['ViTBlock', 'BertLayer'],
    'beit3': ['MultiwayLayer'],
}
# Loss terms averaged by pretrain.models.losses.global_mean (the contrastive ones average local rows).
GLOBAL_MEANS = {'loss_caption', 'loss_mlm', 'loss_itm', 'loss_mdm'}
# ALBEF is left out: its momentum update writes the momentum weights in place inside the forward pass, which
# FSDP's flat parameters do not allow (see toolkit.distributed).
FSDP_METHODS = ('mammut', 'fiber', 'beit3')
# Activation checkpointing switches (on in the FSDP runs and configs: recomputation around FSDP units).
GRAD_CKPT = {
    'mammut': [('image_encoder', 'grad_checkpointing'), ('text_decoder', 'grad_checkpointing')],
    'fiber': [('backbone', 'with_cp')],
    'albef': [('image_encoder', 'grad_checkpointing'), ('text_encoder', 'grad_checkpointing')],
    'beit3': [('backbone', 'grad_checkpointing')],
}


def _shrink(method: str, model: dict[str, Any]) -> None:
    """Tiny widths, no dropout / stochastic depth, linear patch stems (a conv stem's BatchNorm uses
    per-process batch statistics, which no DDP run reproduces on CPU: SyncBatchNorm needs CUDA)."""
    vit = dict(img_size=IMG, patch_size=16, patch_stem='linear', embed_dim=32, depth=2, num_heads=2)
    if method == 'mammut':
        model['image_encoder'].update(vit, detection_grid=8)  # cropped positional embeddings stay on
        model['text_decoder'].update(width=32, depth=2, num_heads=2)
        model.update(embed_dim=16)
    elif method == 'fiber':
        backbone = model['backbone']
        backbone['image'].update(embed_dims=32, depths=(1, 1), num_heads=(2, 2), window_size=2)
        backbone['text'].update(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        backbone.update(fusion_layers=1)
        model.update(embed_dim=16)
    elif method == 'albef':
        model['image_encoder'].update(vit)
        model['text_encoder'].update(
            hidden_size=32,
            num_layers=2,
            num_text_layers=1,
            num_heads=2,
            ffn_dim=64,
            dropout=0.0,
            attn_dropout=0.0,
        )
        # 16 queued features: the third step contrasts against both earlier global batches.
        model.update(embed_dim=16, queue_size=2 * BATCH, alpha_warmup_iters=0)
    else:
        model['backbone'].update(
            img_size=IMG, embed_dim=32, depth=2, num_heads=2, ffn_dim=64, num_vl_layers=1, dropout=0.0
        )
        model.update(contrastive_loss=dict(type='InfoNCELoss'), embed_dim=16)  # MDM and contrastive together


def _one_caption_annotations(data_root: Path, out: Path) -> Path:
    """The training annotations with each image's first caption only (no random caption choice)."""
    ann = json.loads((data_root / 'annotations/captions_train.json').read_text())
    first: dict[int, dict[str, Any]] = {}
    for record in ann['annotations']:
        first.setdefault(record['image_id'], record)
    ann['annotations'] = list(first.values())
    path = out / 'captions_train_one.json'
    path.write_text(json.dumps(ann))
    return path


def _config(
    method: str, data_root: Path, ann_file: Path, work_dir: Path, *, world: int, strategy: dict | None = None
) -> Config:
    cfg = Config.fromfile(str(CONFIGS[method]))
    model = cfg.model.to_dict()
    _shrink(method, model)
    cfg.model = model
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(IMG, IMG), keep_ratio=False),
        dict(type='SampleCaption'),  # one caption per image: no choice
        dict(type='PackImageTextInputs'),
    ]
    cfg.train_dataloader = dict(
        batch_size=BATCH // world,
        num_workers=0,
        persistent_workers=False,
        sampler=dict(type='DefaultSampler', shuffle=False),
        dataset=dict(
            type='ImageCaptionDataset',
            data_root=str(data_root),
            ann_file=str(ann_file),
            data_prefix=dict(img_path='images/train/'),
            pipeline=pipeline,
            serialize_data=False,  # its gc.collect() costs more than this whole tiny run
        ),
    )
    for split in ('val', 'test'):
        cfg[f'{split}_dataloader'] = cfg[f'{split}_cfg'] = cfg[f'{split}_evaluator'] = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=ITERS, val_interval=ITERS + 1)
    cfg.optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=LR))
    cfg.param_scheduler = None
    cfg.default_hooks = dict(
        timer=dict(type='IterTimerHook'),
        logger=dict(type='LoggerHook', interval=ITERS),
        param_scheduler=dict(type='ParamSchedulerHook'),
        checkpoint=None,
        sampler_seed=dict(type='DistSamplerSeedHook'),
    )
    cfg.custom_hooks = []
    cfg.log_processor = dict(type='LogProcessor', window_size=1, by_epoch=False)
    cfg.visualizer = dict(type='Visualizer', vis_backends=[])
    cfg.log_level = 'WARNING'
    cfg.auto_scale_lr = dict(enable=False, base_batch_size=BATCH)
    cfg.randomness = dict(seed=0)
    cfg.env_cfg.dist_cfg.backend = 'gloo'
    cfg.launcher = 'pytorch' if world > 1 else 'none'
    cfg.work_dir = str(work_dir)
    if strategy is not None:
        cfg.strategy = strategy
    return cfg


class _Recorder(Hook):
    """Per iteration: every loss term, the image ids of this process's batch, the clipped gradient norm."""

    priority = 'LOWEST'

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def after_train_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        losses = {key: float(value.detach()) for key, value in outputs.items() if key.startswith('loss')}
        img_ids = [int(sample.img_id) for sample in data_batch['data_samples']]
        scalars = runner.message_hub.log_scalars  # the clipped gradient's norm, when clipping is on
        grad_norm = float(scalars['train/grad_norm'].current()) if 'train/grad_norm' in scalars else None
        self.steps.append(dict(losses=losses, img_ids=img_ids, grad_norm=grad_norm))


def _train(
    method: str,
    data_root: Path,
    ann_file: Path,
    work_dir: Path,
    *,
    world: int,
    fsdp: bool = False,
    bf16: bool = False,
    iters: int = ITERS,
    resume_from: str | None = None,
) -> dict:
    """Train; the losses and image ids of every step, the final parameters (full, also under FSDP).

    ``resume_from``: a checkpoint to resume (AdamW and deterministic models, for :func:`test_fsdp_resumes`).
    """
    from toolkit.engine import build_runner

    strategy = None
    if fsdp and world > 1:
        policy = dict(type='toolkit.distributed.block_wrap_policy', block_names=FSDP_BLOCKS[method])
        strategy = dict(type='FSDPStrategy', model_wrapper=dict(auto_wrap_policy=policy))
        if bf16:  # as the paper-scale FSDP configs: bfloat16 compute and all-gathers, float32 reductions
            precision = dict(param_dtype='bfloat16', reduce_dtype='float32', buffer_dtype='float32')
            strategy['model_wrapper']['mixed_precision'] = precision
    elif fsdp:  # its reference: MMEngine's FlexibleRunner builds the model later, after other RNG draws
        strategy = dict(type='SingleDeviceStrategy')
    cfg = _config(method, data_root, ann_file, work_dir, world=world, strategy=strategy)
    cfg.train_cfg['max_iters'] = iters
    if resume_from is not None:
        cfg.resume, cfg.load_from = True, resume_from
    if iters != ITERS:  # the resume runs: AdamW (a state to restore), no random draws in the model
        cfg.optim_wrapper['optimizer'] = dict(type='AdamW', lr=1e-3)
        cfg.model['image_encoder']['cropped_pos_emb'] = False
        cfg.model['shuffle_passes'] = False
    if fsdp:  # activation checkpointing through the models' own switches, around FSDP units
        for part, switch in GRAD_CKPT[method]:
            cfg.model[part][switch] = True
        # Clipping by the global gradient norm: under FSDP it must be the norm over all shards.
        cfg.optim_wrapper['clip_grad'] = dict(max_norm=0.5)
        # A (constant) schedule: MMEngine's schedulers wrap the optimizer wrapper's step, which FSDP patches.
        cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=ITERS)]
        if method == 'beit3':
            # FSDP needs the same sequence of unit calls on every rank; BEiT-3 makes one backbone pass per MDM
            # group, and the sample-keyed split can leave a group empty on one rank only. With pairs only,
            # every rank makes the same passes (normally group sizes follow from the batch size alone).
            cfg.model['mixture'] = dict(image=0, text=0, pair=1)
        cfg.default_hooks['checkpoint'] = dict(
            type='CheckpointHook', by_epoch=False, interval=ITERS if iters == ITERS else 2, max_keep_ckpts=2
        )
    runner = build_runner(cfg)
    recorder = _Recorder()
    runner.register_hook(recorder)
    runner.train()
    units = 0
    if fsdp and world > 1:
        from torch.distributed.fsdp import FullyShardedDataParallel

        units = sum(isinstance(m, FullyShardedDataParallel) for m in runner.model.modules())
        state = runner.strategy.model_state_dict()  # a collective: the full state dict
        prefix = '_fsdp_wrapped_module.'
        names = {name.replace(prefix, '') for name, _ in runner.model.module.named_parameters()}
        params = {
            k.replace(prefix, ''): v.clone() for k, v in state.items() if k.replace(prefix, '') in names
        }
    else:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        params = {name: param.detach().clone() for name, param in model.named_parameters()}
    return dict(steps=recorder.steps, params=params, fsdp_units=units, work_dir=str(work_dir))


# ------------------------------------------------------------------------------- sample-keyed randomness
def _key(*parts: Any) -> int:
    """A stable 31-bit key of tensors (their bytes) and strings."""
    crc = 0
    for part in parts:
        data = (
            part.detach().cpu().contiguous().numpy().tobytes()
            if isinstance(part, torch.Tensor)
            else str(part)
        )
        crc = zlib.crc32(data if isinstance(data, bytes) else data.encode(), crc)
    return crc & 0x7FFFFFFF


@contextmanager
def _sample_keyed_randomness() -> Iterator[None]:
    """Make the per-process random draws functions of the sample (see the module docstring); undone on exit.

    None of the replacements touches torch's global RNG, so every rank keeps drawing the same numbers for the
    draws that are shared (MaMMUT's pass order and positional-embedding crop)."""
    import pretrain.models.beit3 as beit3
    import pretrain.models.fiber_losses as fiber_losses

    mp_ = pytest.MonkeyPatch()
    mask_captions = fiber_losses.MLMLoss.mask_captions
    mdm = beit3.BEiT3._mdm
    context: dict[str, Any] = {}

    def keyed_mask_captions(self, txt_ids, txt_mask, **kwargs):  # type: ignore[no-untyped-def]
        masked, labels = txt_ids.clone(), torch.full_like(txt_ids, self.ignore_index)
        for row in range(len(txt_ids)):
            length = int(txt_mask[row].sum())
            ids = txt_ids[row : row + 1, :length]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_key(ids))
                row_ids, row_labels = mask_captions(self, ids, txt_mask[row : row + 1, :length], **kwargs)
            masked[row, :length], labels[row, :length] = row_ids[0], row_labels[0]
        return masked, labels

    def mode_draw(logits, allowed, generator):  # type: ignore[no-untyped-def]
        valid = allowed.any(dim=1)
        masked = logits.float().masked_fill(~allowed, float('-inf'))
        masked[~valid] = 0.0
        return masked.argmax(dim=1), valid

    def keyed_mdm(self, inputs, texts):  # type: ignore[no-untyped-def]
        context['keys'] = [_key(inputs[i], texts[i]) for i in range(len(texts))]
        return mdm(self, inputs, texts)

    def keyed_split(self, batch_size, device):  # type: ignore[no-untyped-def]
        keys = context['keys']
        kinds = [kind for kind in beit3._KINDS if self.mixture[kind] > 0]
        groups = {
            kind: [i for i in range(batch_size) if kinds[keys[i] % len(kinds)] == kind]
            for kind in beit3._KINDS
        }
        context['mask_keys'] = [[keys[i] for i in groups[kind]] for kind in ('image', 'pair') if groups[kind]]
        return {kind: torch.tensor(rows, dtype=torch.long, device=device) for kind, rows in groups.items()}

    def keyed_block_masks(self, batch_size, device):  # type: ignore[no-untyped-def]
        keys = context['mask_keys'].pop(0)  # _mdm asks for the image group's masks, then the pair group's
        assert len(keys) == batch_size
        grid = self.backbone.grid
        num = round(self.img_mask_ratio * grid * grid)
        masks = [
            beit3.block_wise_mask(
                (grid, grid), num, min_num_patches=self.min_mask_patches, rng=random.Random(key)
            )
            for key in keys
        ]
        return torch.stack([mask.flatten() for mask, _ in masks]).to(device)

    mp_.setattr(fiber_losses.MLMLoss, 'mask_captions', keyed_mask_captions)
    mp_.setattr(fiber_losses, '_draw', mode_draw)
    mp_.setattr(beit3.BEiT3, '_mdm', keyed_mdm)
    mp_.setattr(beit3.BEiT3, 'split_batch', keyed_split)
    mp_.setattr(beit3.BEiT3, 'block_masks', keyed_block_masks)
    try:
        yield
    finally:
        mp_.undo()


# ------------------------------------------------------------------------------------------ the runs
def _worker(rank: int, port: int, jobs: list[dict[str, Any]], out: Path) -> None:
    os.environ.update(
        MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE='2', LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    code = 0
    try:
        with _sample_keyed_randomness():
            for job in jobs:
                tag = job.pop('tag')
                result = _train(**job, work_dir=out / f'{tag}_rank{rank}', world=2)
                torch.save(result, out / f'{tag}_rank{rank}.pt')
        dist.barrier()
    except BaseException:  # noqa: BLE001  (reported to the test through a file; the other rank may hang)
        (out / f'error_rank{rank}.txt').write_text(traceback.format_exc())
        code = 1
    finally:
        if dist.is_initialized() and not code:
            dist.destroy_process_group()
    os._exit(code)  # skip the interpreter's shutdown (gloo's threads can abort it)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture(scope='module')
def runs(shapes_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """2-process DDP runs of every method and an FSDP MaMMUT run (spawned), and the 1-process references (in
    this process, while the workers run)."""
    out = tmp_path_factory.mktemp('distributed')
    ann_file = _one_caption_annotations(shapes_tiny, out)
    common = dict(data_root=shapes_tiny, ann_file=ann_file)
    jobs = [dict(method=m, tag=f'ddp_{m}', **common) for m in METHODS]
    jobs += [dict(method=m, tag=f'fsdp_{m}', fsdp=True, **common) for m in FSDP_METHODS]
    jobs.append(dict(method='mammut', tag='fsdp_bf16_mammut', fsdp=True, bf16=True, **common))
    jobs.append(dict(method='mammut', tag='fsdp_4iters', fsdp=True, iters=4, **common))
    resume_from = str(out / 'fsdp_4iters_rank0' / 'iter_2.pth')  # rank 0 saves the full state dict
    jobs.append(
        dict(method='mammut', tag='fsdp_resumed', fsdp=True, iters=4, resume_from=resume_from, **common)
    )
    ctx = mp.get_context('spawn')  # fork after OpenMP/gloo initialisation can deadlock
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, jobs, out), daemon=True) for rank in range(2)]
    for proc in procs:
        proc.start()
    try:
        with _sample_keyed_randomness():
            reference = {m: _train(m, work_dir=out / f'ref_{m}', world=1, **common) for m in METHODS}
            for m in FSDP_METHODS:
                reference[f'flexible_{m}'] = _train(
                    m, work_dir=out / f'ref_flexible_{m}', world=1, fsdp=True, **common
                )
    finally:
        for proc in procs:
            proc.join(timeout=300)
            if proc.is_alive():
                proc.kill()
    errors = [p.read_text() for p in sorted(out.glob('error_rank*.txt'))]
    assert not errors and [p.exitcode for p in procs] == [0, 0], (
        '\n'.join(errors) or 'a worker did not finish'
    )
    results: dict[str, Any] = {'ref': reference}
    for job in jobs:
        tag = job['tag']
        results[tag] = [torch.load(out / f'{tag}_rank{rank}.pt', weights_only=True) for rank in range(2)]
    return results


def _compare(reference: dict[str, Any], ranks: list[dict[str, Any]], label: str) -> dict[str, float]:
    """Assert step-by-step agreement; return the largest differences (loss, weights)."""
    loss_diff = 0.0
    for step in range(ITERS):
        ref = reference['steps'][step]
        ids = [r['steps'][step]['img_ids'] for r in ranks]
        assert not set(ids[0]) & set(ids[1]), f'{label}: step {step} gave a sample to both ranks'
        assert sorted(ids[0] + ids[1]) == sorted(ref['img_ids']), f'{label}: step {step} saw another batch'
        assert set(ranks[0]['steps'][step]['losses']) == set(ref['losses'])
        for key, value in ref['losses'].items():
            mean = sum(r['steps'][step]['losses'][key] for r in ranks) / len(ranks)
            assert mean == pytest.approx(value, rel=LOSS_RTOL, abs=LOSS_ATOL), (
                f'{label}: {key} at step {step}'
            )
            loss_diff = max(loss_diff, abs(mean - value))
    weight_diff = 0.0
    params = ranks[0]['params']
    assert params.keys() == reference['params'].keys() and params
    for name, value in reference['params'].items():
        torch.testing.assert_close(
            params[name], value, rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL, msg=f'{label}: {name}'
        )
        weight_diff = max(weight_diff, float((params[name] - value).abs().max()))
    return dict(loss=loss_diff, weights=weight_diff)


@pytest.mark.slow  # the spawned runs of the module fixture: ~1 minute of CPU
@pytest.mark.parametrize('method', METHODS)
def test_two_processes_train_as_one(method: str, runs: dict[str, Any]) -> None:
    ranks = runs[f'ddp_{method}']
    for name, value in ranks[0]['params'].items():  # DDP keeps the replicas identical
        torch.testing.assert_close(ranks[1]['params'][name], value, rtol=0, atol=0)
    diffs = _compare(runs['ref'][method], ranks, method)
    print(f'{method}: max |loss diff| {diffs["loss"]:.2e}, max |weight diff| {diffs["weights"]:.2e}')
    for step in range(ITERS):  # token / pair means are global: every process logs the same value
        values = [r['steps'][step]['losses'] for r in ranks]
        for key in GLOBAL_MEANS & set(values[0]):
            assert values[1][key] == pytest.approx(values[0][key], rel=1e-6), (key, step)


# The FSDP units: MaMMUT 2 ViT blocks (each with its MLP as a nested unit), 2 decoder self-attentions and
# 2 MLPs; FIBER 2 window attentions, 2 FFNs, 1 patch merging, 2 cross-attentions, 2 x 2 RoBERTa FFN halves;
# BEiT-3 2 layers; plus the root.
FSDP_UNITS = {'mammut': 9, 'fiber': 12, 'beit3': 3}


@pytest.mark.slow
@pytest.mark.parametrize('method', FSDP_METHODS)
def test_fsdp_trains_as_one_process(method: str, runs: dict[str, Any]) -> None:
    ranks = runs[f'fsdp_{method}']
    assert ranks[0]['fsdp_units'] == FSDP_UNITS[method]
    reference = runs['ref'][f'flexible_{method}']
    diffs = _compare(reference, ranks, f'fsdp {method}')
    for step in range(ITERS):  # clipping was active and used the norm of the whole gradient
        norm = reference['steps'][step]['grad_norm']
        assert norm > 0.5 and ranks[0]['steps'][step]['grad_norm'] == pytest.approx(norm, rel=1e-4)
    print(f'fsdp {method}: max |loss diff| {diffs["loss"]:.2e}, max |weight diff| {diffs["weights"]:.2e}')
    # The checkpoint holds the full (unsharded) weights as plain tensors: it loads with weights_only=True.
    checkpoint = safe_load(Path(ranks[0]['work_dir']) / f'iter_{ITERS}.pth')
    for name, value in ranks[0]['params'].items():
        torch.testing.assert_close(checkpoint['state_dict'][name], value, rtol=0, atol=0)


@pytest.mark.slow
def test_fsdp_mixed_precision_trains(runs: dict[str, Any]) -> None:
    """bfloat16 FSDP (the paper-scale configs' setting) runs on CPU/gloo and follows the float32 run to within
    bfloat16's precision at the first step (later steps drift apart, as any two precisions do)."""
    bf16, fp32 = runs['fsdp_bf16_mammut'], runs['fsdp_mammut']
    for key in fp32[0]['steps'][0]['losses']:
        mean = sum(r['steps'][0]['losses'][key] for r in bf16) / 2
        reference = sum(r['steps'][0]['losses'][key] for r in fp32) / 2
        assert mean == pytest.approx(reference, rel=2e-2), key  # bfloat16 keeps 8 bits of mantissa
        assert mean != pytest.approx(reference, rel=1e-6, abs=0), key  # and the compute really is bfloat16
    assert all(torch.isfinite(torch.tensor(list(s['losses'].values()))).all() for s in bf16[0]['steps'])
    assert all(value.dtype == torch.float32 for value in bf16[0]['params'].values())  # float32 master weights


@pytest.mark.slow
def test_fsdp_resumes(runs: dict[str, Any]) -> None:
    """4 FSDP iterations (AdamW), and 2 more resumed from the full checkpoint of iteration 2, end alike: the
    weights, AdamW's moments and the step count come back into the shards."""
    full, resumed = runs['fsdp_4iters'][0], runs['fsdp_resumed'][0]
    assert len(resumed['steps']) == 2  # iterations 3 and 4 only
    for mine, theirs in zip(resumed['steps'], full['steps'][2:], strict=True):
        assert mine['losses'] == pytest.approx(theirs['losses'], rel=1e-6)
    for name, value in full['params'].items():
        torch.testing.assert_close(resumed['params'][name], value, rtol=1e-6, atol=1e-7, msg=name)


# ------------------------------------------------------------------------------- pieces, no processes
def test_block_wrap_policy_wraps_the_named_classes_only() -> None:
    from pretrain.models.vit import ViTBlock
    from toolkit.distributed import block_wrap_policy

    block = ViTBlock(8, 2, 2.0, True, 0.0, 1e-5)
    names = ['ViTBlock']
    assert block_wrap_policy(block.mlp, recurse=True, nonwrapped_numel=0, block_names=names)  # looks inside
    assert block_wrap_policy(block, recurse=False, nonwrapped_numel=0, block_names=names)
    assert not block_wrap_policy(block.mlp, recurse=False, nonwrapped_numel=0, block_names=names)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU defaults')
def test_strategy_defaults_on_cpu() -> None:
    from toolkit.distributed import _strategy

    cfg = Config(dict(launcher='pytorch', strategy=dict(type='FSDPStrategy', model_wrapper=dict(a=1))))
    strategy = _strategy(cfg)
    assert strategy['type'] == 'toolkit.distributed.ToolkitFSDPStrategy'
    assert strategy['model_wrapper'] == dict(a=1, type='MMFullyShardedDataParallel', device_id='cpu')
    # full state dicts (plain tensors, weights_only-loadable), gathered in place on CPU
    assert strategy['state_dict_cfg']['state_dict_type'] == 'FULL_STATE_DICT'
    assert strategy['state_dict_cfg']['state_dict_config']['offload_to_cpu'] is False
    ddp = _strategy(Config(dict(launcher='pytorch', strategy=dict(type='DDPStrategy'))))
    assert ddp['model_wrapper']['device_ids'] is None
    with pytest.raises(ValueError, match='distributed launch'):
        _strategy(Config(dict(launcher='none', strategy=dict(type='FSDPStrategy'))))


FSDP_CONFIGS = sorted((REPO / 'configs').rglob('*_fsdp.py'))


@pytest.mark.parametrize('path', FSDP_CONFIGS, ids=lambda p: p.name)
def test_fsdp_configs_name_real_blocks(path: Path) -> None:
    """The paper-scale FSDP configs wrap the blocks the test above trains with, and those blocks exist in the
    method's model (a misspelt name would silently leave everything in the root unit)."""
    from toolkit.registry import MODELS

    cfg = Config.fromfile(str(path))
    method = {'MaMMUT': 'mammut', 'FIBER': 'fiber', 'BEiT3': 'beit3'}[cfg.model.type]
    wrapper = cfg.strategy.model_wrapper
    names = list(wrapper.auto_wrap_policy.block_names)
    assert cfg.strategy.type == 'FSDPStrategy' and names == FSDP_BLOCKS[method]
    assert wrapper.auto_wrap_policy.type == 'toolkit.distributed.block_wrap_policy'
    assert wrapper.mixed_precision.param_dtype == 'bfloat16'
    assert all(cfg.model[part][switch] for part, switch in GRAD_CKPT[method])
    tiny = Config.fromfile(str(CONFIGS[method])).model.to_dict()
    _shrink(method, tiny)
    classes = {type(module).__name__ for module in MODELS.build(tiny).modules()}
    assert set(names) <= classes, set(names) - classes
