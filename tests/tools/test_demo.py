"""The `make demo` job end to end on Shapes World tiny: data, training, evaluation, report and files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.testing.scripts import load_script

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, work = tmp_path / 'sw', tmp_path / 'work'
    cmd = [sys.executable, 'tools/demo/mammut_shapes.py', '--data-root', str(data), '--size', 'tiny',
           '--work-dir', str(work), '--max-epochs', '1', '--show', '2']  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert 'Generating Shapes World tiny' in out and (data / '.complete').is_file()
    for row in ('image-to-text R@5', 'text-to-image R@1', 'BLEU-4', 'CIDEr of the best constant caption'):
        assert row in out
    assert out.count(' reference: ') == 2  # one line per shown caption
    metrics = json.loads((work / 'metrics.json').read_text())
    predictions = json.loads((work / 'predictions_test.json').read_text())
    assert len(predictions) == 16 and {'image_id', 'caption'} <= set(predictions[0])
    assert 0.0 <= metrics['retrieval/i2t_R@5'] <= 1.0
    # The captions shown (the checkpoint through pretrain.apis) are those the evaluation predicted.
    shown = [line.split(': ', 1) for line in out.splitlines() if line.strip().startswith('image ')]
    evaluated = {str(pred['image_id']): pred['caption'] for pred in predictions}
    assert len(shown) == 2 and all(evaluated[name.split()[-1]] == text for name, text in shown)
    assert (work / 'loss_curve.png').stat().st_size > 0 and (work / 'epoch_1.pth').is_file()
    # Run again, it finds the data and does not regenerate it (the data step of the script, in this process).
    marker = (data / '.complete').stat().st_mtime_ns
    demo = load_script(REPO / 'tools/demo/mammut_shapes.py')
    demo.ensure_data(str(data), 'tiny', 0)
    assert 'Shapes World tiny found' in capsys.readouterr().out
    assert (data / '.complete').stat().st_mtime_ns == marker
