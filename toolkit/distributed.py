"""MMEngine's ``FlexibleRunner`` for configs with a ``strategy`` (FSDP, or DDP through the strategy API).

``tools/train.py`` reaches :func:`build_flexible_runner` through :func:`toolkit.engine.build_runner` when a
config sets ``strategy``, e.g. the ``*_fsdp.py`` configs of the paper-scale models::

    strategy = dict(
        type='FSDPStrategy',
        model_wrapper=dict(
            auto_wrap_policy=dict(
                type='toolkit.distributed.block_wrap_policy', block_names=['ViTBlock', 'SelfAttention', 'Mlp']
            ),
            mixed_precision=dict(param_dtype='bfloat16', reduce_dtype='float32', buffer_dtype='float32'),
        ),
    )

What this adds to ``FlexibleRunner.from_cfg``:

* Safe checkpoints, as :func:`toolkit.engine.build_runner`: MMEngine's local loader goes through
  :func:`toolkit.checkpoint.safe_load` and ``SafeCheckpointHook`` is added. FSDP defaults to full
  (unsharded) state dicts: the checkpoint has the layout of a DDP one and holds plain tensors, which
  ``torch.load(weights_only=True)`` accepts (``state_dict_cfg='local'`` saves ``ShardedTensor`` objects,
  which it refuses) and which a different number of processes can load.
* CPU training with gloo (tests, machines without CUDA): the process group is initialised here (MMEngine's
  ``init_dist`` would call ``torch.cuda.set_device``); DDP gets ``device_ids=None``; FSDP gets
  ``device_id='cpu'`` (without it, FSDP 1 in torch 2.13 refuses a CPU-only machine: "FSDP needs a non-CPU
  accelerator device"). FSDP 1 trains on CPU with gloo (all-gather and reduce-scatter run on gloo), in
  float32 and with bfloat16 mixed precision (``tests/toolkit/test_distributed.py``).
* :func:`block_wrap_policy`: an auto-wrap policy naming the transformer block classes (strings in the config,
  no lambdas), so that each block is one FSDP unit: its parameters are gathered only for its own forward and
  backward.
* ``FSDPStrategy`` becomes :class:`ToolkitFSDPStrategy`, which fixes three things MMEngine 0.10.7's strategy
  gets wrong for these models or this torch. Resuming passes torch 2.0's argument order to
  ``optim_state_dict_to_load`` (fails on torch 2.13). FSDP 1 refuses 0-dim parameters (the learned
  ``logit_scale``, ``logit_bias``, ALBEF's ``temp``: "FSDP doesn't support scalar parameters"), so they are
  left out of the shards (``ignored_states``) and their gradients averaged over the processes before each
  optimizer step. Gradient-norm clipping (``clip_grad=dict(max_norm=...)``) must use the norm over all shards
  (``FullyShardedDataParallel.clip_grad_norm_``), not each process's ``torch.nn.utils.clip_grad_norm_`` of its
  own shard (which would clip every process by a different factor).

Activation checkpointing: use the models' own switches (``grad_checkpointing=True`` on ``MaMMUTViT``,
``MaMMUTTextDecoder``, BERT, the Multiway Transformer; ``with_cp=True`` on ``FIBERBackbone``); they recompute
blocks non-reentrantly and work around FSDP units (tested). MMEngine's
``FSDPStrategy(activation_checkpointing=...)`` wraps modules in ``CheckpointWrapper`` instead; not needed.

Limits of FSDP here:

* A module an FSDP unit wraps must be run through its ``forward``; its parameters are shards outside it.
  MaMMUT's decoder projects the cross-attention keys / values with ``block.image_kv(...)``, so its units are
  the blocks' self-attention and MLP, not whole blocks; FIBER's backbone runs the parts of the mmdet Swin
  blocks and RoBERTa layers itself (``block.attn``, ``layer.attention.self.query``), so its units are those
  parts (see the ``*_fsdp.py`` configs).
* Every process must run the same units in the same order (each unit's forward all-gathers). MaMMUT, FIBER
  and BEiT-3 do in training (BEiT-3's MDM group sizes follow from the batch size alone). In evaluation,
  caption generation stops after a data-dependent number of decoder calls and ITM re-ranking runs the model
  on the main process only: both would hang, so the FSDP configs evaluate retrieval by embeddings, and the
  rest runs with ``tools/test.py`` and the DDP config on the checkpoint (full weights, the DDP layout).
* ALBEF does not run under FSDP: its momentum update (inside the forward pass) writes the momentum weights
  in place, and under FSDP those are views of the flat parameter the online weights are views of too; the
  next use fails with "RuntimeError: Output 0 of View is a view and its base or another view of its base has
  been modified inplace". ALBEF at paper scale (187M trained parameters) trains with DDP.

Collectives the models use in their losses (no-ops with one process): :func:`world_info` (rank and world
size), :func:`gather_with_grad` (all processes' rows, with gradients) and :func:`select_global_rows` (chosen
rows of the global batch, without gradients).
"""

from __future__ import annotations

import copy
import os
import types
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from mmengine._strategy import FSDPStrategy
from mmengine.config import Config
from torch import Tensor, nn

from toolkit.checkpoint import install_safe_loader
from toolkit.skips import set_ledger

__all__ = [
    'ToolkitFSDPStrategy',
    'block_wrap_policy',
    'build_flexible_runner',
    'gather_with_grad',
    'select_global_rows',
    'world_info',
]


def world_info() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` when ``torch.distributed`` is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(features: Tensor) -> Tensor:
    """Concatenate ``features`` (B, E) of all processes -> (B * world, E), gradients flowing back to each."""
    _, world_size = world_info()
    if world_size == 1:
        return features
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features.contiguous()), dim=0)  # type: ignore[no-untyped-call]


@torch.no_grad()
def select_global_rows(local: Tensor, rows: Tensor) -> Tensor:
    """Rows ``rows`` (K,) of the global batch (the processes' ``local`` (B, ...) tensors concatenated in rank
    order, as :func:`gather_with_grad` orders them) -> (K, ...), without gradients.

    Each process broadcasts its batch in turn and every process keeps the rows it asked for, so at most one
    other batch is held at a time: an all-gather would hold all W (FIBER-B's ITM negatives: 4096 images of
    384 px, 7 GB per GPU). Every process must call it, with ``local`` of the same shape.
    """
    rank, world_size = world_info()
    if world_size == 1:
        return local[rows]
    size = local.shape[0]
    out = local.new_empty((len(rows), *local.shape[1:]))
    for source in range(world_size):
        batch = local.contiguous() if source == rank else torch.empty_like(local)
        dist.broadcast(batch, source)
        keep = (rows // size) == source
        out[keep] = batch[rows[keep] % size]
    return out


def _full_state_dict(offload: bool) -> dict[str, Any]:
    """Unsharded model and optimizer state for checkpoints with the DDP layout, loadable with
    ``weights_only=True`` and by another number of processes. ``offload``: gathered on rank 0 only and moved
    to the CPU (GPUs). Without CUDA, every rank gathers in place: with ``offload_to_cpu=True`` the "offloaded"
    copy of a CPU tensor is the unsharded buffer itself, which FSDP frees before cloning it (torch 2.13
    segfaults in ``_full_post_state_dict_hook``)."""
    options = dict(offload_to_cpu=offload, rank0_only=offload)
    return dict(
        state_dict_type='FULL_STATE_DICT',
        state_dict_config=dict(type='FullStateDictConfig', **options),
        optim_state_dict_config=dict(type='FullOptimStateDictConfig', **options),
    )


def block_wrap_policy(
    module: nn.Module, recurse: bool, nonwrapped_numel: int, *, block_names: Sequence[str]
) -> bool:
    """FSDP auto-wrap policy: every module whose class name is in ``block_names`` becomes its own FSDP unit.

    The callable form of torch's ``ModuleWrapPolicy`` (which needs the classes themselves), so that a config
    can name the blocks as strings: ``dict(type='toolkit.distributed.block_wrap_policy', block_names=[...])``.
    ``recurse=True`` asks whether to look inside ``module`` (always); ``recurse=False`` whether to wrap it.
    """
    if recurse:
        return True
    return type(module).__name__ in block_names


def _average_grads(params: Sequence[nn.Parameter]) -> None:
    """Average the gradients of replicated (not sharded) parameters over the processes; a missing gradient
    counts as zero (every process must take part in each all-reduce)."""
    world = dist.get_world_size()
    for param in params:
        grad = param.grad if param.grad is not None else torch.zeros_like(param)
        dist.all_reduce(grad)
        param.grad = grad.div_(world)


class ToolkitFSDPStrategy(FSDPStrategy):
    """MMEngine's ``FSDPStrategy`` with 0-dim parameters kept out of the shards, global-norm clipping and a
    resume that works with torch 2.13 (see the module docstring).

    :func:`build_flexible_runner` substitutes it for ``FSDPStrategy``; the arguments are the same.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replicated_params: list[nn.Parameter] = []

    def _wrap_model(self, model: nn.Module) -> Any:
        self.replicated_params = [param for param in model.parameters() if param.dim() == 0]
        wrapper: dict[str, Any] = dict(getattr(self, 'model_wrapper', None) or {})
        if self.replicated_params:
            if wrapper.get('ignored_modules'):
                raise ValueError(
                    'ToolkitFSDPStrategy: use ignored_states, not ignored_modules, in model_wrapper'
                )
            wrapper['ignored_states'] = [*(wrapper.get('ignored_states') or []), *self.replicated_params]
        self.model_wrapper = wrapper  # a plain dict: the registry copies it shallowly, the parameters stay
        return super()._wrap_model(model)

    def load_optim_state_dict(self, state_dict: dict[str, Any]) -> None:
        """MMEngine 0.10.7 passes ``(state_dict, model, optim)`` positionally to ``optim_state_dict_to_load``,
        the argument order of torch 2.0; torch 2.1 and later take ``(model, optim, optim_state_dict)``, so
        resuming failed ("TypeError: unhashable type: 'dict'"). Keywords work with both."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        to_load = FullyShardedDataParallel.optim_state_dict_to_load(
            model=self.model, optim=self.optim_wrapper.optimizer, optim_state_dict=state_dict
        )
        self.optim_wrapper.load_state_dict(to_load)

    def build_optim_wrapper(self, optim_wrapper: Any, model: nn.Module | None = None) -> Any:
        built = super().build_optim_wrapper(optim_wrapper, model)
        inner = getattr(built, 'optim_wrappers', None)  # an OptimWrapperDict
        for wrapper in inner.values() if isinstance(inner, dict) else [built]:
            self._patch(wrapper)
        return built

    def _patch(self, wrapper: Any) -> None:
        step = wrapper.step
        replicated = self.replicated_params

        def synced_step(optim_wrapper: Any, **kwargs: Any) -> None:
            _average_grads(replicated)  # before clipping and the update, as DDP's reduction would be
            step(**kwargs)

        # A bound method, as MMEngine's parameter schedulers expect when they wrap ``step`` to count calls.
        wrapper.step = types.MethodType(synced_step, wrapper)
        if getattr(wrapper, 'clip_func', None) is torch.nn.utils.clip_grad_norm_:
            fsdp_model = self.model

            def clip_global_norm(params: Any, **kwargs: Any) -> torch.Tensor:
                return fsdp_model.clip_grad_norm_(**kwargs)  # the norm over all shards and replicated params

            wrapper.clip_func = clip_global_norm


def _cpu_only() -> bool:
    return not torch.cuda.is_available()


def _init_gloo(cfg: Config) -> None:
    """The process group of a CPU run from torchrun's environment (MMEngine then skips its own)."""
    import torch.distributed as dist

    if cfg.get('launcher', 'none') not in ('pytorch', 'none'):
        raise ValueError(
            f'CPU distributed training supports the pytorch launcher (torchrun), not {cfg.launcher!r}'
        )
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')


def _strategy(cfg: Config) -> dict[str, Any]:
    strategy = copy.deepcopy(dict(cfg.strategy))
    if strategy.get('type') is None:
        raise ValueError('strategy needs a type, e.g. FSDPStrategy or DDPStrategy')
    distributed = cfg.get('launcher', 'none') != 'none'
    name = strategy['type'] if isinstance(strategy['type'], str) else strategy['type'].__name__
    wrapper = dict(strategy.get('model_wrapper') or {})
    if name in ('FSDPStrategy', 'ToolkitFSDPStrategy'):
        strategy['type'] = 'toolkit.distributed.ToolkitFSDPStrategy'  # an import path: no registry entry
        if not distributed:
            raise ValueError('FSDPStrategy needs a distributed launch (torchrun, --launcher pytorch)')
        strategy.setdefault('state_dict_cfg', _full_state_dict(offload=not _cpu_only()))
        wrapper.setdefault('type', 'MMFullyShardedDataParallel')
        if _cpu_only():
            wrapper['device_id'] = 'cpu'
        strategy['model_wrapper'] = wrapper
    elif name == 'DDPStrategy' and _cpu_only():
        wrapper.setdefault('type', 'MMDistributedDataParallel')
        wrapper.setdefault('broadcast_buffers', False)
        wrapper['device_ids'] = None
        strategy['model_wrapper'] = wrapper
    return strategy


def build_flexible_runner(cfg: Config) -> Any:
    """Build MMEngine's ``FlexibleRunner`` for ``cfg.strategy`` with safe checkpoints and CPU/gloo support.

    Args:
        cfg: a config with ``strategy`` (``FSDPStrategy``, ``DDPStrategy``, ...) and ``launcher``
            (``'pytorch'`` under torchrun). Modified in place: safe-checkpoint hook, default scope, strategy
            defaults (full state dicts for FSDP; CPU devices without CUDA).
    """
    from mmengine.runner import FlexibleRunner

    install_safe_loader()
    hooks = list(cfg.get('custom_hooks', []) or [])
    # As for the toolkit's Runner: weights-only checkpoints, NaN/inf guard, skipped-sample report. (Exact
    # resume and recorded checkpoints are the Runner's; FlexibleRunner's saves go through the strategy.)
    for name in ('SafeCheckpointHook', 'NonFiniteGuardHook', 'SkipLedgerHook'):
        if not any(h.get('type') == name for h in hooks):
            hooks.append(dict(type=name))
    cfg.custom_hooks = hooks
    set_ledger(os.path.join(cfg.work_dir, 'skipped_samples.jsonl'))
    cfg.setdefault('default_scope', 'toolkit')
    cfg.setdefault('launcher', 'none')
    if cfg.launcher != 'none' and _cpu_only():
        _init_gloo(cfg)
        env = cfg.setdefault('env_cfg', {})
        env.setdefault('dist_cfg', {})['backend'] = 'gloo'
    cfg.strategy = _strategy(cfg)
    return FlexibleRunner.from_cfg(cfg)
