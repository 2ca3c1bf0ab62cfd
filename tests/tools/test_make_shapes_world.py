"""tools/data/make_shapes_world.py: the CLI writes the same data set as the generator it wraps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_cli_writes_the_generators_data_set(tmp_path: Path, shapes_tiny: Path) -> None:
    out = tmp_path / 'sw'
    args = ['--out', str(out), '--seed', '0', '--size', 'tiny', '--workers', '1']
    cmd = [sys.executable, 'tools/data/make_shapes_world.py', *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    instances = json.loads((out / 'annotations/instances_train.json').read_text())
    assert summary['images']['train'] == len(instances['images']) > 0
    for name in ('instances_train.json', 'instances_train_base.json', 'ov_split.json', 'lvis_v1_val.json'):
        # The same seed gives byte-identical JSON: the CLI passes its arguments through unchanged.
        assert (out / 'annotations' / name).read_bytes() == (
            shapes_tiny / 'annotations' / name
        ).read_bytes(), name
