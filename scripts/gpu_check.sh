#!/usr/bin/env bash
# The GPU check of issue #25 in one command, for the device tool's machine (one H100 or H200,
# its image's Python 3.12 with torch, transformers, peft, accelerate; no network): install the
# carried wheels and this package (the image's torch stays), then run scripts/gpu_check.py's
# parts, each under a time limit, ~8 minutes in all. It keeps going past a failed part.
#
#   bash scripts/gpu_wheels.sh                        # here first: fills .gpu-wheels/
#   bash scripts/gpu_check.sh OUTDIR                  # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run OUTDIR        # here, no GPU (GPU_CHECK_DRY_RUN=1 too)
#   GPU_CHECK_ONLY=throughput,profile bash scripts/gpu_check.sh OUTDIR   # some parts again
#
# A session with a GPU makes one call of the device tool:
#   run(command="bash scripts/gpu_check.sh $OUT/gpu", carry=[".gpu-wheels"], timeout_s=600)
# and reads $OUT/gpu/gpu_check.json (every part's status and figures), gpu_check.log (every
# command's output) and install.log.
#
# The dry run installs the same wheels, with the same commands, into a throwaway Python 3.12
# venv whose "image" is made of metadata stubs (the image's versions where KINDS.md gives
# them, else those gpu_wheels.sh resolved), so pip's resolver and `pip check` judge the
# carried set as they would there; then it runs every part's CPU stand-in with
# GPU_CHECK_PYTHON (default: this checkout's .venv).
#
# Environment: GPU_CHECK_PYTHON (the interpreter to install into and run with; default
# python3, the image's), GPU_CHECK_WHEELS (default .gpu-wheels), GPU_CHECK_ONLY (parts),
# GPU_CHECK_BUDGET (seconds for the parts, default 420).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=${GPU_CHECK_DRY_RUN:-0}
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
OUT=${1:?usage: gpu_check.sh [--dry-run] OUTDIR}
WHEELS=${GPU_CHECK_WHEELS:-.gpu-wheels}
mkdir -p "$OUT"
INSTALL_LOG=$OUT/install.log
: >"$INSTALL_LOG"

# No hub, no W&B, no network: the machine has none, and nothing here should try.
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PIP_DISABLE_PIP_VERSION_CHECK=1
export HF_HUB_DISABLE_PROGRESS_BARS=1

# Install the carried wheels into `$1` (a python), resolving their dependencies against what
# is installed; if that fails (an image package older than a wheel asks for), install every
# carried wheel without dependencies, and let `pip check` and the import check say what is
# off. Then this package, editable, without dependencies or build isolation (no network for
# a build environment: setuptools comes with the wheels). Prints ok, fallback or failed.
install_into() {
  local py=$1 status=ok
  if [[ ! -f $WHEELS/requirements.txt ]]; then
    echo "failed: no $WHEELS/requirements.txt (run scripts/gpu_wheels.sh here, carry $WHEELS)"
    return
  fi
  if ! "$py" -m pip install --no-index --no-cache-dir --find-links "$WHEELS" \
      -r "$WHEELS/requirements.txt" >>"$INSTALL_LOG" 2>&1; then
    echo "resolution failed; installing every carried wheel with --no-deps" >>"$INSTALL_LOG"
    status=fallback
    "$py" -m pip install --no-index --no-cache-dir --no-deps "$WHEELS"/*.whl \
      >>"$INSTALL_LOG" 2>&1 || status=failed
  fi
  "$py" -m pip install --no-index --no-cache-dir --no-deps --no-build-isolation -e . \
    >>"$INSTALL_LOG" 2>&1 || status=failed
  echo "--- pip check" >>"$INSTALL_LOG"
  "$py" -m pip check >>"$INSTALL_LOG" 2>&1 || true
  echo "$status"
}

# What the check imports from the carried wheels and the image, tried one by one after the
# install so that install.log names each one that fails.
MODULES="hydra omegaconf antlr4 math_verify latex2sympy2_extended submitit dill multiprocess
  hydra_plugins.hydra_joblib_launcher hydra_plugins.hydra_submitit_launcher datasets trl peft
  tic_grpo_cli.cli tic_grpo_cli.train.loop"
import_check() {  # $1 python, then module names
  local py=$1
  shift
  "$py" - "$@" >>"$INSTALL_LOG" 2>&1 <<'EOF'
import importlib
import sys

failed = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as err:  # any import error is what this check is for
        failed.append(f"{name}: {type(err).__name__}: {err}")
print("imports:", "all ok" if not failed else "\n  ".join(["FAILED", *failed]))
sys.exit(1 if failed else 0)
EOF
}

# A Python 3.12 that runs (a pyenv shim on PATH may not), for the dry run's stub venv.
find_python312() {
  local candidate
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
      "$(command -v python3.12)"; do
    if [[ -x $candidate ]] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' \
        2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
}

started=$(date +%s)
if [[ $DRY == 1 ]]; then
  PY=${GPU_CHECK_PYTHON:-.venv/bin/python}
  py312=$(find_python312)
  if [[ -z $py312 ]]; then
    INSTALL_STATUS="skipped: no python3.12 here"
  else
    stub=$(mktemp -d)
    "$py312" -m venv "$stub/venv" >>"$INSTALL_LOG" 2>&1
    "$stub/venv/bin/python" scripts/gpu_stub_image.py "$WHEELS" >>"$INSTALL_LOG" 2>&1
    # No import check here: the image's packages are stubs without code.
    INSTALL_STATUS="$(install_into "$stub/venv/bin/python") (stub image, Python 3.12)"
    rm -rf "$stub"
  fi
else
  PY=${GPU_CHECK_PYTHON:-python3}
  nvidia-smi -L 2>&1 | tee -a "$INSTALL_LOG"
  INSTALL_STATUS=$(install_into "$PY")
  # shellcheck disable=SC2086  # one word per module is meant
  import_check "$PY" $MODULES || INSTALL_STATUS="$INSTALL_STATUS, imports failed"
fi
echo "[gpu_check] install: $INSTALL_STATUS ($(($(date +%s) - started)) s; $INSTALL_LOG)"
tail -3 "$INSTALL_LOG"

args=(--out "$OUT" --budget "${GPU_CHECK_BUDGET:-420}")
[[ $DRY == 1 ]] && args+=(--dry-run)
[[ -n ${GPU_CHECK_ONLY:-} ]] && args+=(--only "$GPU_CHECK_ONLY")
GPU_CHECK_INSTALL="$INSTALL_STATUS" "$PY" scripts/gpu_check.py "${args[@]}"
echo "[gpu_check] done in $(($(date +%s) - started)) s: $OUT/gpu_check.json"
