#!/usr/bin/env bash
# make cuda-build: saferegx._C with the CUDA binding (csrc/cuda/binding.cu), built against a CUDA
# build of torch in .venv-cuda, on a machine without a GPU; then loaded and checked there
# (scripts/cuda_check.py: CUDA kernels registered for safety_loss_fwd/_bwd, sm_90 code, no
# compiler warning from csrc/).
#
# The build goes to build/cuda/lib, never into saferegx/: the .so there is .venv's CPU build (same
# Python, same file name), which a CUDA-linked one would break. A rerun with the same sources,
# flags, torch and nvcc (build/cuda/inputs.sha256) only reruns the check; anything else is a
# full rebuild, so that build/cuda/build.log always holds every compiler message. Environment: SAFEREGX_CUDA_VENV (.venv-cuda), SAFEREGX_CUDA_TORCH
# (torch==2.14.1, the cu130 build, as nvcc 13.0), MAX_JOBS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SAFEREGX_CUDA_VENV:-.venv-cuda}
TORCH=${SAFEREGX_CUDA_TORCH:-torch==2.14.1}
OUT=build/cuda
export MAX_JOBS=${MAX_JOBS:-2}

t0=$(date +%s)
test -x "$VENV/bin/python" || python3 -m venv "$VENV"
t1=$(date +%s)
if ! "$VENV/bin/python" -W ignore -c 'import sys, torch; sys.exit(torch.version.cuda is None)' 2>/dev/null \
   || ! "$VENV/bin/python" -c 'import setuptools, ninja' 2>/dev/null; then
  "$VENV/bin/pip" install -q "$TORCH" "setuptools>=77" wheel ninja 2> >(grep -v "is ignored: it is neither" >&2)
fi
t2=$(date +%s)
command -v nvcc >/dev/null || { echo "cuda-build: nvcc not found on PATH" >&2; exit 1; }
# The toolkit nvcc belongs to (torch would take /usr/local from a /usr/local/bin/nvcc wrapper, and
# find no libcudart there). cuBLAS/cuSPARSE/cuSOLVER come from torch's nvidia-* wheels (setup.py).
if [ -z "${CUDA_HOME:-}" ]; then
  top=$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
  export CUDA_HOME=$(cd "${top:-$(dirname "$(command -v nvcc)")/..}" && pwd -P)
fi
# Every warning of the host and device compilers, and ptxas's register/spill report per kernel.
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -Xcompiler=-Wall,-Wextra --resource-usage -Xptxas=-warn-spills,-warn-lmem-usage"
export CFLAGS="${CFLAGS:-} -Wextra"

mkdir -p "$OUT"
inputs=$( (cat csrc/*.cpp csrc/*/* setup.py saferegx/_build_flags.py scripts/cuda_build.sh
           "$VENV/bin/python" -W ignore -c 'import torch; print(torch.__version__)'
           nvcc --version; env | grep -E '^(NVCC_APPEND_FLAGS|CFLAGS|TORCH_CUDA_ARCH_LIST|CUDA_HOME)=' | sort
         ) | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/inputs.sha256" ] && [ "$(cat "$OUT/inputs.sha256")" = "$inputs" ] \
   && ls "$OUT"/lib/saferegx/_C*.so >/dev/null 2>&1; then
  echo "cuda-build: up to date (build/cuda/inputs.sha256), checking the existing build"
  t3=$(date +%s)
else
  rm -rf "$OUT/lib" "$OUT/tmp" "$OUT/inputs.sha256"
  echo "cuda-build: building saferegx._C with CUDA ($($VENV/bin/python -W ignore -c 'import torch; print(torch.__version__)'), $(nvcc --version | tail -1), CUDA_HOME=$CUDA_HOME, MAX_JOBS=$MAX_JOBS)"
  set +e
  SAFEREGX_BUILD_CUDA=1 "$VENV/bin/python" -W ignore setup.py build_ext \
    --build-lib "$OUT/lib" --build-temp "$OUT/tmp" > "$OUT/build.log" 2>&1
  rc=$?
  set -e
  t3=$(date +%s)
  if [ $rc -ne 0 ]; then
    tail -40 "$OUT/build.log" >&2
    echo "cuda-build: the build failed (log: $OUT/build.log)" >&2
    exit $rc
  fi
  echo "$inputs" > "$OUT/inputs.sha256"
fi
so=$(ls "$OUT"/lib/saferegx/_C*.so)
"$VENV/bin/python" scripts/cuda_check.py "$so" --log "$OUT/build.log" --json "$OUT/check.json"
t4=$(date +%s)
echo "cuda-build: ok, $so"
echo "cuda-build: venv $((t1 - t0)) s, torch install $((t2 - t1)) s, build $((t3 - t2)) s, check $((t4 - t3)) s"
