"""Set-up self-check: import every dependency and run one real op of each compiled library.

Exits non-zero naming the broken piece and the known fix, so a broken environment
fails at set-up rather than in the middle of a test run.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

PACKAGES = [
    'torch', 'torchvision', 'mmengine', 'mmcv', 'mmdet', 'numpy', 'einops', 'decord', 'av', 'pycocotools',
    'lvis', 'pycocoevalcap', 'tokenizers', 'transformers', 'matplotlib',
    'torchscale.model.BEiT3',  # test extra: fairscale + timm pins overridden (requirements/overrides.txt)
    'starlette', 'uvicorn', 'multipart', 'jinja2', 'selenium',  # app extra (tools/demo/app.py), its test
    'importlinter',  # test extra: lint-imports checks the package layering (setup.cfg)
    'toolkit', 'pretrain', 'detection', 'video',
]  # fmt: skip

FIXES = {
    'torchvision': 'torchvision must match a PyPI torch build: `rm -rf .venv && make test` reinstalls '
    'the pins '
    '(a CPU-only +cpu torch cannot load PyPI torchvision: "operator torchvision::nms does not exist").',
    'mmcv': 'mmcv must be 2.1.0 with compiled ops built against the pinned torch: delete the cached wheel '
    '(~/.cache/vl-toolkit/wheels) and rerun `make test` to rebuild it.',
    'decord': 'decord could not read an H.264 mp4: reinstall it with `rm -rf .venv && make test`.',
    'av': 'PyAV could not encode/decode H.264: reinstall it with `rm -rf .venv && make test`.',
    'java': 'install Java for pycocoevalcap: `sudo apt-get install -y default-jre-headless`.',
}


def check_torchvision() -> None:
    import torch
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2], keep


def check_mmcv() -> None:
    import torch
    from mmcv.ops import ModulatedDeformConv2d, nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2], keep
    conv = ModulatedDeformConv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 8, 8)
    offset, mask = torch.zeros(1, 18, 8, 8), torch.ones(1, 9, 8, 8)
    y = conv(x, offset, mask)
    # With zero offsets and unit masks the op is an ordinary convolution.
    ref = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    assert torch.allclose(y, ref, atol=1e-4), (y - ref).abs().max()


def write_clip(path: Path, frames: int = 8) -> None:
    import av
    import numpy as np

    with av.open(str(path), 'w') as container:
        stream = container.add_stream('h264', rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, 'yuv420p'
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format='rgb24')
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def check_av(clip: Path) -> None:
    import av

    with av.open(str(clip)) as container:
        n = sum(1 for _ in container.decode(video=0))
    assert n == 8, n


def check_decord(clip: Path) -> None:
    import decord

    reader = decord.VideoReader(str(clip))
    batch = reader.get_batch([0, 7]).asnumpy()
    assert len(reader) == 8 and batch.shape == (2, 32, 32, 3), (len(reader), batch.shape)


def check_java() -> None:
    if shutil.which('java') is None:
        raise RuntimeError('java is not on PATH')


def main() -> int:
    failures: list[str] = []

    def run(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
            print(f'  ok    {name}')
        except Exception:  # noqa: BLE001 - report every failure, then exit non-zero
            print(f'  FAIL  {name}\n{traceback.format_exc()}')
            failures.append(name)

    for pkg in PACKAGES:
        run(f'import {pkg}', lambda pkg=pkg: importlib.import_module(pkg) and None)
    run('torchvision.ops.nms', check_torchvision)
    run('mmcv.ops.nms + ModulatedDeformConv2d', check_mmcv)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / 'clip.mp4'
        run('av write H.264 clip', lambda: write_clip(clip))
        run('av read', lambda: check_av(clip))
        run('decord read', lambda: check_decord(clip))
    run('java (pycocoevalcap)', check_java)

    if failures:
        print('\nSelf-check FAILED:')
        for name in failures:
            key = next((k for k in FIXES if k in name), None)
            print(f'  - {name}: {FIXES.get(key, "see the traceback above")}' if key else f'  - {name}')
        return 1
    print('Self-check passed.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
