"""The README's Python API examples run as written, on checkpoints of the configs they name.

Each ``python`` block of the README's "Python API" section is executed from the repository root with its
paths pointed at this session's data and checkpoints: Shapes World tiny for ``data/shapes_world_small``, the
session's short ``tools/train.py`` runs for the ``work_dirs/app`` checkpoints and a random-init checkpoint for
the demo's image-text model, and a temporary folder for the outputs.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _python_api_blocks() -> list[str]:
    text = (REPO / 'README.md').read_text(encoding='utf-8')
    section = text.split('\n## Python API\n', 1)[1].split('\n## ', 1)[0]
    return re.findall(r'```python\n(.*?)```', section, flags=re.S)


def test_the_readme_has_an_example_per_task() -> None:
    code = '\n'.join(_python_api_blocks())
    for api in ('OVDetInferencer', 'ImageTextInferencer', 'VideoTextInferencer', 'init_model'):
        assert api in code, api


@pytest.fixture(scope='module')
def image_text_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init checkpoint of the demo's MaMMUT (``make demo`` trains the real one)."""
    from toolkit.apis import init_model

    torch.manual_seed(0)
    model = init_model(REPO / 'configs/mammut/mammut_vit-tiny-dec4_1xb32-30e_shapes-cap.py')
    path = tmp_path_factory.mktemp('demo') / 'epoch_30.pth'
    torch.save(dict(state_dict=model.state_dict()), path)
    return path


@pytest.mark.slow
def test_python_api_examples_run(
    shapes_tiny: Path,
    fiber_shapes_run: Path,
    video_shapes_run: Path,
    image_text_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paths = {
        'data/shapes_world_small': str(shapes_tiny),
        'work_dirs/app/det/epoch_24.pth': str(fiber_shapes_run / 'epoch_1.pth'),
        'work_dirs/app/video/epoch_12.pth': str(video_shapes_run / 'epoch_2.pth'),
        'work_dirs/demo/epoch_30.pth': str(image_text_checkpoint),
        'work_dirs/': f'{tmp_path}/',
    }
    monkeypatch.chdir(REPO)
    blocks = _python_api_blocks()
    assert len(blocks) >= 4
    for block in blocks:
        code = block
        for old, new in paths.items():
            code = code.replace(f"'{old}", f"'{new}")
        assert "'work_dirs/" not in code and "'data/" not in code, code
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, 'README.md', 'exec'), {'__name__': 'readme_example'})
        assert out.getvalue().strip() or 'init_model' in code, block  # each example prints what it found
    assert os.path.isfile(tmp_path / 'ovd_api/results.json')
