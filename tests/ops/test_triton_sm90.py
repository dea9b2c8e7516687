"""Every Triton kernel saferegx can launch, compiled ahead of time for Hopper (sm_90), no GPU.

scripts/triton_sm90.py derives the launches from the op's own code (`_forward` / `_backward` on
`_Inputs` configured by `_config("cuda", dtype, 132)`, and the probe op's `_run`) on meta tensors
of the benchmark sizes, binds them with Triton's JIT binder for sm_90 and compiles each distinct
variant with `triton.compile`. It runs in a subprocess: this suite sets TRITON_INTERPRET=1 (see
conftest.py), under which the kernels are interpreted functions that the compiler cannot take.
Its report is checked here: every variant compiles, fits sm_90's shared memory, spills no
register, and runs every bf16/fp16 dot on tensor cores. Two processes, about 3 minutes on an
empty Triton cache (seconds on a warm one, where only ptxas -v reruns).

SAFEREGX_SM90_DOCS=1 also rewrites the table in docs/gpu.md (or run the script with
--write-docs docs/gpu.md).
"""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia.compiler", reason="Triton without its NVIDIA backend")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "triton_sm90.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sm90") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(SCRIPT), "--jobs", str(min(2, os.cpu_count() or 1)), "--json", str(out)]
    if os.environ.get("SAFEREGX_SM90_DOCS") == "1":
        cmd += ["--write-docs", str(ROOT / "docs" / "gpu.md")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if not out.exists():
        pytest.fail(
            f"{SCRIPT.name} wrote no report (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )
    print(done.stdout)
    return json.loads(out.read_text())


def _name(v):
    c = v["constexprs"]
    return f"{v['kernel']} {v['dtype']} " + " ".join(
        f"{k}={c[k]}" for k in ("HAS_REF", "SHARED", "REVERSE", "GRAD_H", "GRAD_W") if k in c
    )


def test_every_variant_compiles(report):
    failed = [f"{_name(v)}: {v['result']['error']}" for v in report["variants"] if v["result"]["error"]]
    assert not failed, "\n".join(failed)


def test_shared_memory_fits_sm90(report):
    over = [
        f"{_name(v)}: {v['result']['shared']} B"
        for v in report["variants"]
        if not v["result"]["error"] and v["result"]["shared"] > report["smem_limit"]
    ]
    assert not over, f"over {report['smem_limit']} B per block:\n" + "\n".join(over)


def test_no_register_spills(report):
    spills = [
        f"{_name(v)}: {v['result']['registers']} registers, {v['result']['spill_stores']} B "
        f"spill stores, {v['result']['spill_loads']} B spill loads"
        for v in report["variants"]
        if not v["result"]["error"] and (v["result"]["spill_stores"] or v["result"]["spill_loads"])
    ]
    assert not spills, "\n".join(spills)
    assert all(v["result"]["registers"] for v in report["variants"] if not v["result"]["error"])


def test_half_precision_dots_use_tensor_cores(report):
    """bf16/fp16 operands: every tl.dot is a wgmma (or mma.sync), and the PTX has them."""
    half = [v for v in report["variants"] if v["dtype"] in ("bf16", "fp16") and v["kernel"] != "_probe_kernel"]
    assert half
    for v in half:
        r = v["result"]
        assert r["dots"] and all(k in ("wgmma", "mma") for k in r["dots"]), f"{_name(v)}: {r['dots']}"
        assert r["ptx_wgmma"] or r["ptx_mma_sync"], _name(v)


def test_fp32_dots_stay_ieee(report):
    """input_precision="ieee" keeps fp32 off TF32 tensor cores (FMA), so the GPU computes what
    the interpreter tests check."""
    fp32 = [v for v in report["variants"] if v["dtype"] == "fp32" and v["kernel"] != "_probe_kernel"]
    assert fp32
    for v in fp32:
        assert set(v["result"]["dots"]) == {"fma"}, f"{_name(v)}: {v['result']['dots']}"


def test_variants_are_every_configuration_the_op_launches(report):
    """The compiled constexpr sets are exactly what the op can launch: each dtype with every
    reference form (no KL direction without a reference) and, for the gradient kernel, every
    non-empty choice of (dh, dW); each from both benchmark sizes (their specializations agree)."""
    refs = [(False, True, False)] + [(True, shared, rev) for shared in (True, False) for rev in (False, True)]
    grads = [(True, True), (True, False), (False, True)]
    dtypes = ("fp32", "bf16", "fp16")
    want = {("_stats_kernel", dt, *ref) for dt in dtypes for ref in refs}
    want |= {("_grad_kernel", dt, *ref, *g) for dt, ref, g in itertools.product(dtypes, refs, grads)}
    want |= {("_probe_kernel", dt) for dt in dtypes}
    got = [
        (
            v["kernel"],
            v["dtype"],
            *(v["constexprs"][k] for k in ("HAS_REF", "SHARED", "REVERSE", "GRAD_H", "GRAD_W") if k in v["constexprs"]),
        )
        for v in report["variants"]
    ]
    assert len(got) == len(set(got)), "two variants with the same constexprs (a specialization split)"
    assert set(got) == want
    sizes = {"x".join(map(str, s)) for s in report["sizes"]}
    for v in report["variants"]:
        if v["kernel"] != "_probe_kernel":
            assert {c.split()[0] for c in v["cases"]} == sizes, _name(v)


def test_config_on_a_cuda_device_is_config_with_its_sm_count(monkeypatch):
    """What the compile test configures with ("cuda", 132) is what a 132-SM device gets."""
    from saferegx.ops import triton as tb

    class Props:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert tb._device_config(torch.device("cuda", 0), dtype) == tb._config("cuda", dtype, 132)
    blocks, options, programs = tb._config("cuda", torch.bfloat16, 132)
    assert programs == 4 * 132 and options["num_warps"] == 8
