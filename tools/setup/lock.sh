#!/usr/bin/env bash
# Writes requirements/constraints.txt from the installed environment (the tested stack).
set -euo pipefail
cd "$(dirname "$0")/../.."
{
    echo "# The one place where versions are pinned: the tested stack (uv pip install -c this file)."
    echo "# Regenerate with: make lock  (after changing setup.cfg); mmcv 2.1.0 is built from source when no wheel fits."
    .venv/bin/uv pip freeze --python .venv/bin/python | grep -v -E '^(-e |uv==|vl-toolkit|opencv-contrib-python)' | sed 's#^mmcv @ .*#mmcv==2.1.0#'
} > requirements/constraints.txt
