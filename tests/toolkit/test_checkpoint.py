"""Safe checkpoints: Runner checkpoints load with weights_only, anything else is refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

from toolkit.checkpoint import (
    UnsafeCheckpointError,
    from_plain,
    load_converted,
    load_state_dict_file,
    safe_load,
    strip_prefix,
    to_plain,
)
from toolkit.hooks import SafeCheckpointHook


class _Pairs(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(4, generator=g))


class _Regressor(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, inputs, data_samples=None, mode='loss'):  # type: ignore[no-untyped-def]
        return dict(loss=self.linear(torch.stack(inputs)).pow(2).mean())


def _runner(work_dir: Path, max_epochs: int, resume_from: Path | None = None) -> Runner:
    return Runner(
        **dict(
            model=_Regressor(),
            work_dir=str(work_dir),
            train_dataloader=dict(
                dataset=_Pairs(),
                batch_size=4,
                sampler=dict(type='DefaultSampler', shuffle=True),
                num_workers=0,
            ),
            train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
            optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-2)),
            default_hooks=dict(
                checkpoint=dict(type='CheckpointHook', interval=1), logger=dict(type='LoggerHook', interval=1)
            ),
            randomness=dict(seed=0),
            default_scope='toolkit',
            log_level='WARNING',
            custom_hooks=[SafeCheckpointHook()],
            resume=resume_from is not None,
            load_from=None if resume_from is None else str(resume_from),
        )
    )


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ('echo pwned',))


def test_runner_checkpoint_is_plain_and_resumes(tmp_path: Path) -> None:
    _runner(tmp_path, max_epochs=1).train()
    ckpt_path = tmp_path / 'epoch_1.pth'
    ckpt = safe_load(ckpt_path)
    assert ckpt['meta']['epoch'] == 1
    assert 'train/loss' in ckpt['message_hub']['log_scalars']
    # mmengine's own loader path (used by resume/load_from) goes through safe_load too.
    resumed = _runner(tmp_path, max_epochs=2, resume_from=ckpt_path)
    resumed.train()
    assert resumed.train_loop.epoch == 2
    history = resumed.message_hub.get_scalar('train/loss')
    assert isinstance(history, HistoryBuffer) and len(history.data[0]) >= 2
    assert (tmp_path / 'epoch_2.pth').is_file()


def test_code_in_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'payload': _Evil()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil.pth.*'posix.system'|evil.pth.*system"):
        safe_load(path)


def test_truncated_checkpoint_is_reported(tmp_path: Path) -> None:
    path = tmp_path / 'model.pth'
    torch.save({'w': torch.randn(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsafeCheckpointError, match='model.pth'):
        safe_load(path)


def test_plain_roundtrip_of_history_buffers() -> None:
    buf = HistoryBuffer([1.0, 2.0], [1, 1], max_length=5)
    plain = to_plain({'a': buf, 'b': [torch.tensor(1.0)]})
    assert pickle.loads(pickle.dumps(plain))  # plain data only
    restored = from_plain(plain)['a']
    assert isinstance(restored, HistoryBuffer) and restored.max_length == 5
    assert restored.data[0].tolist() == [1.0, 2.0]


def test_state_dict_file_formats(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = {'w': torch.randn(3, 3)}
    save_file(sd, tmp_path / 'm.safetensors')
    torch.save({'state_dict': sd}, tmp_path / 'm.pth')
    assert torch.equal(load_state_dict_file(tmp_path / 'm.safetensors')['w'], sd['w'])
    assert torch.equal(load_state_dict_file(str(tmp_path / 'm.pth'))['w'], sd['w'])


def test_state_dict_file_unwraps_only_the_wrappers_asked_for(tmp_path: Path) -> None:
    sd = {'w': torch.randn(2)}
    torch.save({'model': sd, 'iteration': 3}, tmp_path / 'mrcnn.pth')  # maskrcnn_benchmark's layout
    with pytest.raises(UnsafeCheckpointError, match='state dict of tensors'):
        load_state_dict_file(tmp_path / 'mrcnn.pth')
    loaded = load_state_dict_file(tmp_path / 'mrcnn.pth', wrappers=('state_dict', 'model', 'module'))
    assert torch.equal(loaded['w'], sd['w'])


def test_strip_prefix_only_when_every_key_has_it() -> None:
    one = torch.zeros(1)
    assert strip_prefix({'module.a': one, 'module.b': one}) == {'a': one, 'b': one}
    assert strip_prefix({'module.a': one, 'b': one}) == {'module.a': one, 'b': one}  # not a wrapper
    assert strip_prefix({'module.module.a': one}) == {'module.a': one}
    assert strip_prefix({'module.module.a': one}, nested=True) == {'a': one}
    assert strip_prefix({'ema.a': one}, 'ema.') == {'a': one}


def test_load_converted_returns_missing_keys_and_refuses_unexpected_ones() -> None:
    module = torch.nn.Linear(2, 2)
    assert load_converted(module, {'weight': torch.ones(2, 2)}) == ['bias']
    assert torch.equal(module.weight, torch.ones(2, 2))
    with pytest.raises(ValueError, match='unexpected keys'):
        load_converted(module, {'other': torch.ones(1)})
