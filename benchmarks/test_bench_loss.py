"""pytest-benchmark: fused CPU loss vs the unfused baseline, Liger and the GEMM floors, side by side.

Not part of the test suite (pytest's testpaths is tests/, and pyproject adds --benchmark-disable):

    .venv/bin/python -m pytest benchmarks --benchmark-enable
    SAFEREGX_BENCH_SIZE=2048x576x49152 .venv/bin/python -m pytest benchmarks --benchmark-enable

One step = forward + backward to dL/dh (the head frozen), 0.5 CE + 0.5 reverse KL, the workload of
benchmarks/cpu_loss.py (whose step builders these reuse). Timings only: for per-mode peak memory
run cpu_loss.py, which gives each mode its own process.
"""

import os

import pytest
import torch

import cpu_loss  # this folder is on sys.path: pytest puts a test file's folder there

SIZE = os.environ.get("SAFEREGX_BENCH_SIZE", "1024x576x49152")
N, D, V = cpu_loss.parse_sizes(SIZE)[0]
ROUNDS = int(os.environ.get("SAFEREGX_BENCH_ROUNDS", "3"))


@pytest.fixture(scope="module")
def inputs():
    return cpu_loss.make_inputs(N, D, V, logit_std=3.0, ref_noise=0.1, seed=0)


@pytest.mark.parametrize("mode", ["cpu", "unfused", "liger", "floor", "floor-chunked"])
def test_fwd_bwd(benchmark, inputs, mode):
    if mode == "cpu":
        from saferegx.ops.api import available_backends

        if "cpu" not in available_backends("cpu"):
            pytest.skip("the saferegx C++ extension is not built")
    if mode == "liger":
        pytest.importorskip("liger_kernel")
    hidden, weight, ref_hidden, labels = inputs
    hidden = hidden.clone().requires_grad_(True)
    step = cpu_loss.make_step(mode, hidden, weight, ref_hidden, labels, "reverse", False, 0.5, 0.5)

    def run():
        hidden.grad = None
        return step()

    benchmark.group = f"fwd+bwd dL/dh, N x D x V = {SIZE}, {torch.get_num_threads()} threads"
    benchmark.extra_info.update(mode=mode, size=SIZE)
    loss = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert hidden.grad is not None and hidden.grad.shape == hidden.shape
    if loss is not None:
        assert torch.isfinite(loss)
