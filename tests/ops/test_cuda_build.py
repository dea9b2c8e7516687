"""make cuda-build, where .venv-cuda exists: saferegx._C with the CUDA binding builds against a
CUDA torch, loads there without a GPU, and has CUDA kernels for safety_loss_fwd / _bwd.

A fresh .venv-cuda (torch 2.14.1+cu130, ~5.4 GB) plus a first build takes about 5 minutes on 2
cores (docs/gpu.md), too long for every `make test`: the venv is made only by `make cuda-build`,
and this test is skipped without it. With it, the build is incremental (ninja keeps
build/cuda/tmp): seconds when csrc/ and setup.py did not change.
"""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_PY = ROOT / ".venv-cuda" / "bin" / "python"

pytestmark = pytest.mark.skipif(not VENV_PY.exists(), reason="no .venv-cuda (make cuda-build creates it)")


def test_cuda_build_loads_and_registers_cuda_kernels():
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "cuda_build.sh")], cwd=ROOT, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    report = json.loads((ROOT / "build" / "cuda" / "check.json").read_text())
    assert report["torch_cuda"], report
    for op in ("saferegx::safety_loss_fwd", "saferegx::safety_loss_bwd"):
        assert report["kernels"][op] == {"CPU": True, "CUDA": True}, report["kernels"]
    assert report["sm_elves"] is None or "sm_90" in report["sm_elves"]
    assert report["warnings"] == [], report["warnings"]
    assert report["kernel_resources"], "ptxas --resource-usage reported no kernel of ours"
    for kernel, usage in report["kernel_resources"].items():
        assert usage.get("spill_stores") == 0 and usage.get("spill_loads") == 0, (kernel, usage)
