#!/usr/bin/env bash
# The whole GPU verification as one command (docs/gpu.md, "The GPU check"), within 8 minutes.
#
#   benchmarks/gpu_check.sh [OUTDIR] [--dry-run] [--python PY] [--wheels DIR] [--budget S]
#                           [--skip STAGE,...]
#
# Results go to $OUT when set (the device run tool's folder), else OUTDIR: gpu_check.log (all
# output), gpu_check.json (the summary), and each stage's own report. Stages, each under its own
# timeout, all under one deadline (--budget, default 470 s, so that one hang cannot eat the run):
#   env         the device, and which packages are there (inventory.json)
#   wheels      installs the carried wheels (--wheels, default .gpu-carry/wheels, made by
#               benchmarks/gpu_wheels.sh) whose distribution is missing, into a folder outside the
#               checkout put on PYTHONPATH: the machine's own environment is not changed
#   build       saferegx._C with the CUDA binding (SAFEREGX_BUILD_CUDA=1, sm_90), then
#               scripts/cuda_check.py (CUDA kernels registered, no warning)   } in parallel
#   warm        scripts/triton_sm90.py: every Triton kernel variant at the    }
#               benchmark and test sizes compiled on all cores (triton_sm90.json): the compile
#               test on that machine's Triton, and Triton's cache filled before the tests
#   tests       pytest tests/ops/test_gpu.py (tests_gpu.xml)
#   bench       benchmarks/gpu.py at both sizes, full-size accuracy against float64 (bench.json)
#   train       scripts/gpu_train_check.py: 20 steps of saferegx train, tiny Llama, bf16, LoRA,
#               probe risk, device cuda (train/train_summary.json)
#   properties  tests/ops/test_op_properties.py -k cuda, Triton compiled (tests_properties.xml)
# The last lines printed are a short table (scripts/gpu_check_summary.py).
#
# --dry-run (no GPU): the same stages without the GPU work: the inventory, the wheels that would
# be installed, make cuda-build (.venv-cuda), the variants listed, the test selections collected,
# gpu.py's plan, and the trainer on CPU for 2 steps.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

DRY=0; PY=""; WHEELS=.gpu-carry/wheels; BUDGET=""; SKIP=","; OUTDIR="${OUT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --python) PY=$2; shift ;;
    --wheels) WHEELS=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --skip) SKIP=",$2,"; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    *) [ -z "${OUT:-}" ] && OUTDIR=$1 ;;
  esac
  shift
done
if [ -z "$OUTDIR" ]; then echo "gpu_check: give an output folder (or set OUT)" >&2; exit 2; fi
# 470 s on the GPU machine (the run tool allows 600, the check is to fit in 8 minutes); a dry run
# on 2 busy cores may rebuild the extension in .venv-cuda (up to ~6 minutes)
[ -z "$BUDGET" ] && { [ $DRY = 1 ] && BUDGET=1800 || BUDGET=470; }
case "$BUDGET" in *[!0-9]*) echo "gpu_check: --budget takes seconds" >&2; exit 2 ;; esac
if [ -z "$PY" ]; then
  if [ $DRY = 1 ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$OUTDIR/logs"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG=$OUTDIR/gpu_check.log
: > "$LOG"
: > "$OUTDIR/stages.jsonl"
START=$(date +%s)
RESERVE=15  # seconds kept for the summary

# Outside the checkout and $OUT (whose files come back): the carried wheels, and the build.
WORK=${TMPDIR:-/tmp}/saferegx-gpu-check
SITE=$WORK/site
mkdir -p "$SITE"
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$SITE/bin:$PATH"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export SAFEREGX_NO_JIT=1      # never a surprise JIT build of the C++ kernels mid-stage
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
unset TRITON_INTERPRET
NPROC=$(nproc 2>/dev/null || echo 4)

say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

# stage NAME CAP_SECONDS: runs the function NAME_stage (exported, in a bash of its own, so that
# timeout can kill it and all it started) under min(CAP, what is left of the budget); output to
# logs/NAME.log (appended to gpu_check.log), status to stages.jsonl.
export DRY PY WHEELS OUTDIR SITE NPROC REPO
finish_stage() {  # NAME RC SECONDS LIMIT
  local status=ok
  if [ "$2" = skip ]; then status=skipped
  elif [ "$2" = 124 ] || [ "$2" = 137 ]; then status=timeout
  elif [ "$2" != 0 ]; then status="failed:$2"; fi
  [ $DRY = 1 ] && [ "$status" = ok ] && status=dry-run
  echo "{\"stage\": \"$1\", \"status\": \"$status\", \"seconds\": $3, \"limit\": $4}" >> "$OUTDIR/stages.jsonl"
  { echo "----- $1: $status ($3 s of $4) -----"; cat "$OUTDIR/logs/$1.log" 2>/dev/null; } >> "$LOG"
  echo "[gpu_check $(( $(date +%s) - START ))s] $1: $status ($3 s)"
}
limit_for() {  # CAP -> seconds this stage may take now (0: no time left)
  local left=$(( BUDGET - RESERVE - ($(date +%s) - START) ))
  [ "$left" -lt 10 ] && { echo 0; return; }
  [ "$1" -lt "$left" ] && echo "$1" || echo "$left"
}
stage() {
  local name=$1 cap=$2
  if [[ "$SKIP" == *",$name,"* ]]; then : > "$OUTDIR/logs/$name.log"; finish_stage "$name" skip 0 0; return; fi
  local lim; lim=$(limit_for "$cap")
  if [ "$lim" = 0 ]; then echo "no time left in the budget" > "$OUTDIR/logs/$name.log"
    finish_stage "$name" skip 0 0; return; fi
  local t0; t0=$(date +%s)
  export -f "${name}_stage"
  timeout -k 10 "$lim" bash -c "${name}_stage" > "$OUTDIR/logs/$name.log" 2>&1
  finish_stage "$name" $? $(( $(date +%s) - t0 )) "$lim"
}

say "repo $REPO, out $OUTDIR, python $PY, budget ${BUDGET}s, dry-run $DRY, $NPROC cores"

# --- env ---------------------------------------------------------------------------------------
env_stage() {
  command -v nvidia-smi >/dev/null && nvidia-smi -L
  "$PY" --version
  "$PY" scripts/gpu_check_summary.py inventory "$OUTDIR"
}
stage env 30

# --- wheels ------------------------------------------------------------------------------------
wheels_stage() {
  [ -d "$WHEELS" ] || { echo "no carried wheels at $WHEELS (benchmarks/gpu_wheels.sh makes them)"; return 0; }
  mapfile -t todo < <("$PY" scripts/gpu_check_summary.py wheels "$OUTDIR" "$WHEELS")
  echo "carried: $(ls "$WHEELS"/*.whl 2>/dev/null | wc -l) wheels; to install: ${#todo[@]}"
  [ ${#todo[@]} = 0 ] && return 0
  printf '  %s\n' "${todo[@]}"
  if [ $DRY = 1 ]; then echo "(dry run: not installed)"; return 0; fi
  "$PY" -m pip install -q --no-index --no-deps --disable-pip-version-check --target "$SITE" \
    "${todo[@]}" && "$PY" scripts/gpu_check_summary.py inventory "$OUTDIR" | tail -n +2 >/dev/null
}
stage wheels 60

# --- build and warm, in parallel -----------------------------------------------------------------
build_stage() {
  if [ $DRY = 1 ]; then  # make cuda-build: the same setup.py path, against .venv-cuda's CUDA torch
    env -u TORCH_CUDA_ARCH_LIST bash scripts/cuda_build.sh && cp build/cuda/check.json "$OUTDIR/cuda_check.json"
    return; fi
  local lib=build/gpu-lib
  rm -rf "$lib"
  SAFEREGX_BUILD_CUDA=1 MAX_JOBS=$NPROC "$PY" setup.py build_ext --build-lib "$lib" \
    --build-temp build/gpu-tmp > "$OUTDIR/build_compiler.log" 2>&1 || { tail -60 "$OUTDIR/build_compiler.log"; return 1; }
  local so; so=$(ls "$lib"/saferegx/_C*.so) || return 1
  mv -f "$so" saferegx/  # one rename: the warm stage may import saferegx meanwhile
  "$PY" scripts/cuda_check.py saferegx/$(basename "$so") --log "$OUTDIR/build_compiler.log" \
    --json "$OUTDIR/cuda_check.json"
}
WARM_SIZES="8192x4096x128256 16384x576x49152 333x160x5003 77x19x101 24x20x160"
export WARM_SIZES
warm_stage() {
  if [ $DRY = 1 ]; then "$PY" scripts/triton_sm90.py --list --sizes $WARM_SIZES | tail -5; return; fi
  "$PY" scripts/triton_sm90.py --jobs $(( NPROC > 6 ? NPROC - 4 : 2 )) --sizes $WARM_SIZES \
    --json "$OUTDIR/triton_sm90.json" | tail -3
  return "${PIPESTATUS[0]}"
}
lim=$(limit_for 200)
if [ "$lim" = 0 ]; then SKIP="$SKIP,build,warm,"; fi
t0=$(date +%s)
export -f build_stage warm_stage
pids=()
for name in build warm; do
  if [[ "$SKIP" == *",$name,"* ]]; then : > "$OUTDIR/logs/$name.log"; pids+=(skip); continue; fi
  timeout -k 10 "$lim" bash -c "${name}_stage" > "$OUTDIR/logs/$name.log" 2>&1 &
  pids+=($!)
done
for i in 0 1; do
  name=$([ $i = 0 ] && echo build || echo warm)
  if [ "${pids[$i]}" = skip ]; then finish_stage $name skip 0 0; continue; fi
  wait "${pids[$i]}"; rc=$?
  finish_stage $name $rc $(( $(date +%s) - t0 )) "$lim"
done

# --- tests ---------------------------------------------------------------------------------------
tests_stage() {
  local pytest=("$PY" -m pytest -p no:cacheprovider -o addopts=-ra -q tests/ops/test_gpu.py)
  if [ $DRY = 1 ]; then "${pytest[@]}" --collect-only | tail -3; return "${PIPESTATUS[0]}"; fi
  "${pytest[@]}" --junitxml="$OUTDIR/tests_gpu.xml" --maxfail=30 2>&1 | tail -40
  return "${PIPESTATUS[0]}"
}
stage tests 150

# --- bench ---------------------------------------------------------------------------------------
bench_stage() {
  if [ $DRY = 1 ]; then "$PY" benchmarks/gpu.py --dry-run --out "$OUTDIR/bench_plan.json"; return; fi
  "$PY" benchmarks/gpu.py --out "$OUTDIR/bench.json" --rep 100 --full-check
}
stage bench 150

# --- train ---------------------------------------------------------------------------------------
train_stage() {
  if [ $DRY = 1 ]; then "$PY" scripts/gpu_train_check.py --out "$OUTDIR/train" --device cpu --steps 2; return; fi
  "$PY" scripts/gpu_train_check.py --out "$OUTDIR/train" --device cuda --steps 20 --bf16
}
stage train 90

# --- properties ----------------------------------------------------------------------------------
# tests/conftest.py sets TRITON_INTERPRET=1 only without CUDA; importing the Triton backend first,
# compiled, makes sure test_op_properties' cuda-triton case runs the GPU kernels (cpu-triton skips).
properties_stage() {
  local extra=(--junitxml="$OUTDIR/tests_properties.xml")
  [ $DRY = 1 ] && extra=(--collect-only)
  "$PY" -c "
import os, sys
os.environ.pop('TRITON_INTERPRET', None)
import saferegx.ops.triton, saferegx.ops.probe_triton, pytest
rc = pytest.main(['-p', 'no:cacheprovider', '-o', 'addopts=-ra', '-q', 'tests/ops/test_op_properties.py',
                  '-k', 'cuda', *sys.argv[1:]])
sys.exit(0 if rc == 5 and '--collect-only' in sys.argv else rc)  # 5: none selected (no GPU)
" "${extra[@]}" 2>&1 | tail -30
  return "${PIPESTATUS[0]}"
}
stage properties 90

# --- summary -------------------------------------------------------------------------------------
"$PY" scripts/gpu_check_summary.py summary "$OUTDIR" 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
