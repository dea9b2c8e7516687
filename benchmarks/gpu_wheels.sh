#!/usr/bin/env bash
# Downloads the Python 3.12 wheels the GPU machine may lack into .gpu-carry/wheels (ignored by
# git), for the device run tool's `carry` (64 MiB in all, with the rest of what is carried).
# benchmarks/gpu_check.sh installs from there only what that machine does not have.
#
#   benchmarks/gpu_wheels.sh              the core set (~3.5 MB): liger-kernel (known missing
#                                         there), the test runner and its plugins, hypothesis,
#                                         ninja, pybind11
#   benchmarks/gpu_wheels.sh --datasets   also datasets and its stack (~60 MB: pyarrow alone is
#                                         42 MB), for the trainer stage, if the machine lacks it
#                                         (gpu_check.json's "missing" says so after a first run)
#
# Known there: Python 3.12, torch 2.11.0+cu130, Triton 3.6, transformers, peft, accelerate (so
# numpy, safetensors, tqdm, pyyaml, psutil, huggingface-hub, tokenizers, fsspec); no liger-kernel,
# no gguf (not needed: the trainer stage makes its own tiny model). Pins: versions that install
# with --no-deps beside that set (datasets 4.0 still takes pyarrow >= 15: 19.0.1 is 42 MB, 26.x
# is 55 MB, which would not fit).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.gpu-carry/wheels
LIMIT=$((64 * 1024 * 1024))
CORE=(liger-kernel pytest pluggy iniconfig pygments hypothesis sortedcontainers pytest-benchmark
      py-cpuinfo2 ninja pybind11)
DATASETS=(datasets==4.0.0 pyarrow==19.0.1 pandas==2.2.3 dill==0.3.8 multiprocess==0.70.16 xxhash
          aiohttp aiohappyeyeballs aiosignal attrs frozenlist multidict yarl propcache python-dateutil
          pytz tzdata six)
pkgs=("${CORE[@]}")
for arg in "$@"; do
  case "$arg" in
    --datasets) pkgs+=("${DATASETS[@]}") ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "gpu_wheels.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
rm -rf "$DEST"
mkdir -p "$DEST"
for p in "${pkgs[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    "$p" -d "$DEST" 2> >(grep -v "is ignored: it is neither" >&2)
done
ls -l "$DEST"/*.whl | awk '{printf "%10d  %s\n", $5, $9}'
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, $((total / 1024)) KiB in $DEST"
if [ "$total" -gt "$LIMIT" ]; then
  echo "gpu_wheels: over the 64 MiB carry limit" >&2
  exit 1
fi
