"""The GPU cases (skipped without CUDA): every fused backend on CUDA tensors against float64.

Run in a pytest process of its own (benchmarks/gpu_check.sh does): without CUDA the suite's
tests/conftest.py sets TRITON_INTERPRET=1, and Triton fixes interpreter or compiler when a kernel
is decorated. This file unsets it first, so the kernels here are compiled for the
device; if another file imported them interpreted earlier in the process, the Triton cases skip.

Covered: `triton` and `cuda` x fp32/bf16/fp16 x no / shared / separate reference head x forward /
reverse KL x mean / sum / none (non-uniform grad_output), head trained or frozen, at odd sizes
(333 x 160 x 5003: a partial row block, vocab block and split; 77 x 19 x 101: D below one chunk
and not a multiple of 16); a bf16 problem at 2048 x 1024 x 32000 against float64 (the 1e-2
target); equal logits give KL = 0 exactly; opcheck of the four CUDA ops; torch.compile (inductor)
over both backends; the autotuner's pick, timed with CUDA events; probe_risk on CUDA.
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if CUDA:  # before saferegx.ops.triton is imported: compiled kernels, not the interpreter
    os.environ.pop("TRITON_INTERPRET", None)

pytestmark = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

if CUDA:
    import saferegx
    from saferegx.ops import autotune, library

    try:
        from saferegx.ops import probe_triton as _pt
        from saferegx.ops import triton as _tb

        TRITON_COMPILED = type(_tb._stats_kernel).__name__ == "JITFunction"
    except ImportError:
        TRITON_COMPILED = False
    HAVE = saferegx.available_backends("cuda")
else:
    TRITON_COMPILED, HAVE = False, []

F64 = torch.float64
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# fp32: FMA dots in fp32 (no TF32). Half inputs: the logits are exact products of the rounded
# inputs accumulated in fp32, so loss/ce/kl stay near fp32 accuracy; dh and dW come back in the
# input dtype (and dz is rounded to it as their GEMMs' operand).
TOL = {"fp32": dict(stats=2e-5, grads=2e-4), "bf16": dict(stats=2e-4, grads=2e-2), "fp16": dict(stats=2e-4, grads=5e-3)}


def backend_param(name):
    marks = []
    if name not in HAVE:
        marks.append(pytest.mark.skip(reason=f"backend {name!r} not available on CUDA here"))
    elif name == "triton" and not TRITON_COMPILED:
        marks.append(
            pytest.mark.skip(
                reason="saferegx.ops.triton was imported interpreted (TRITON_INTERPRET=1) earlier in this process"
            )
        )
    return pytest.param(name, marks=marks, id=name)


BACKENDS = [backend_param("triton"), backend_param("cuda")]


def problem(n, d, v, *, dtype, ref, kl="forward", reduction="mean", seed=0, scale=3.0):
    """A random problem rounded to `dtype` on CUDA, and the kwargs of safety_loss."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    hidden = torch.randn(n, d, device="cuda", generator=g, dtype=F64)
    weight = torch.randn(v, d, device="cuda", generator=g, dtype=F64) * (scale / d**0.5)
    labels = torch.randint(0, v, (n,), device="cuda", generator=g)
    labels[torch.rand(n, device="cuda", generator=g) < 0.25] = -100
    kwargs = dict(kl=kl, reduction=reduction, ce_weight=torch.rand(n, device="cuda", generator=g, dtype=torch.float32))
    ref_hidden = None
    if ref != "none":
        ref_hidden = (hidden + 0.5 * torch.randn(n, d, device="cuda", generator=g, dtype=F64)).to(dtype)
        kwargs["kl_weight"] = torch.rand(n, device="cuda", generator=g, dtype=torch.float32)
        if ref == "separate":
            kwargs["ref_weight"] = (
                weight + 0.1 * weight.std() * torch.randn(v, d, device="cuda", generator=g, dtype=F64)
            ).to(dtype)
    return hidden.to(dtype), weight.to(dtype), labels, ref_hidden, kwargs


def run(hidden, weight, labels, ref_hidden, kwargs, *, backend, grad_weight=True, dtype=None):
    """(loss, ce, kl, dh, dW) with a non-uniform grad_output; inputs cast to `dtype` first."""
    cast = lambda t: t if t is None or dtype is None else t.detach().to(dtype)  # noqa: E731
    kw = {
        k: (cast(t) if k == "ref_weight" else t.to(dtype) if dtype is not None and isinstance(t, torch.Tensor) else t)
        for k, t in kwargs.items()
    }
    h = cast(hidden).detach().clone().requires_grad_(True)
    w = cast(weight).detach().clone().requires_grad_(grad_weight)
    if backend == "unfused":
        out = saferegx.safety_loss_unfused(h, w, labels, cast(ref_hidden), **kw)
    else:
        out = saferegx.safety_loss(h, w, labels, cast(ref_hidden), backend=backend, **kw)
    loss, ce, kl = out
    up = torch.linspace(0.5, 1.5, loss.numel(), device="cuda", dtype=loss.dtype).reshape(loss.shape)
    (loss * up).sum().backward()
    return loss.detach(), ce, kl, h.grad, w.grad if grad_weight else None


def rel_err(got, want):
    want = want.double()
    scale = want.abs().max().item() if want.numel() else 0.0
    diff = (got.double() - want).abs().max().item() if want.numel() else 0.0
    return diff / scale if scale > 0 else diff


def assert_matches(got, want, dtype_name, what):
    tol = TOL[dtype_name]
    for name, g, w, bar in zip(("loss", "ce", "kl", "dh", "dW"), got, want, (tol["stats"],) * 3 + (tol["grads"],) * 2):
        if w is None:
            assert g is None, f"{what} {name}"
            continue
        assert g.shape == w.shape, f"{what} {name}: {tuple(g.shape)} != {tuple(w.shape)}"
        assert torch.isfinite(g).all(), f"{what} {name}: non-finite"
        err = rel_err(g, w)
        assert err <= bar, f"{what} {name}: relative error {err:.2e} > {bar:.0e}"


CASES = [
    (ref, kl)
    for ref in ("none", "shared", "separate")
    for kl in (("forward",) if ref == "none" else ("forward", "reverse"))
]


@pytest.mark.parametrize("grad_weight", [True, False], ids=["dW", "frozen-head"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ref,kl", CASES, ids=[f"{r}-{k}" for r, k in CASES])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_float64(backend, dtype_name, ref, kl, reduction, grad_weight):
    p = problem(333, 160, 5003, dtype=DTYPES[dtype_name], ref=ref, kl=kl, reduction=reduction)
    got = run(*p, backend=backend, grad_weight=grad_weight)
    want = run(*p, backend="unfused", grad_weight=grad_weight, dtype=F64)
    assert got[0].dtype == torch.float32
    assert got[3].dtype == DTYPES[dtype_name]
    assert_matches(got, want, dtype_name, f"{backend}/{dtype_name}/{ref}/{kl}/{reduction}")


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_small_unaligned_d(backend, dtype_name, reduction):
    """D = 19: one partial D chunk, rows not 16-element aligned."""
    p = problem(77, 19, 101, dtype=DTYPES[dtype_name], ref="separate", kl="reverse", reduction=reduction, seed=1)
    got = run(*p, backend=backend)
    assert_matches(got, run(*p, backend="unfused", dtype=F64), dtype_name, f"{backend} D=19")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_large_within_1e2_of_float64(backend):
    """The accuracy target of docs/gpu.md, at a size with many vocab blocks and splits."""
    p = problem(2048, 1024, 32000, dtype=torch.bfloat16, ref="shared", kl="reverse")
    got = run(*p, backend=backend)
    want = run(*p, backend="unfused", dtype=F64)
    for name, g, w in zip(("loss", "ce", "kl", "dh", "dW"), got, want):
        assert rel_err(g, w) <= 1e-2, f"{name}: {rel_err(g, w):.2e}"


@pytest.mark.parametrize("kl", ["forward", "reverse"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_equal_logits_give_zero_kl(backend, kl):
    hidden, weight, labels, _, kwargs = problem(129, 64, 3001, dtype=torch.float32, ref="none", scale=30.0)
    out = saferegx.safety_loss(
        hidden, weight, labels, hidden.clone(), kl=kl, backend=backend, kl_weight=torch.ones(129, device="cuda")
    )
    assert out.kl.abs().max().item() == 0.0


def _fwd_args(dtype, ref, reduction, grads):
    hidden, weight, labels, ref_hidden, kw = problem(37, 48, 211, dtype=dtype, ref=ref, reduction=reduction)
    scalar = reduction != "none"
    return (
        hidden.requires_grad_(grads),
        weight,
        labels,
        ref_hidden,
        kw.get("ref_weight"),
        kw["ce_weight"],
        kw.get("kl_weight"),
        library.KL_MODES["forward"],
        -100,
        library.REDUCTIONS[reduction],
        scalar and grads,
        scalar and grads,
    )


OPS = {"triton": ("safety_loss_fwd_triton", "safety_loss_bwd_triton"), "cuda": ("safety_loss_fwd", "safety_loss_bwd")}


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("ref", ["none", "separate"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_forward(backend, dtype, ref, reduction):
    op = getattr(torch.ops.saferegx, OPS[backend][0]).default
    torch.library.opcheck(op, _fwd_args(dtype, ref, reduction, True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_backward(backend):
    args = _fwd_args(torch.float32, "shared", "none", False)
    fwd = getattr(torch.ops.saferegx, OPS[backend][0])
    _, _, kl, _, _ = fwd(*args)
    hidden, weight, labels, ref_hidden, ref_weight, ce_w, kl_w, kl_mode, ignore = args[:9]
    bwd = getattr(torch.ops.saferegx, OPS[backend][1]).default
    torch.library.opcheck(
        bwd,
        (
            torch.rand(37, device="cuda"),
            hidden.detach(),
            weight,
            labels,
            ref_hidden,
            ref_weight,
            ce_w,
            kl_w,
            kl,
            kl_mode,
            ignore,
            True,
            True,
        ),
    )


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_matches_eager(backend, reduction):
    hidden, weight, labels, ref_hidden, kwargs = problem(
        97, 64, 1031, dtype=torch.bfloat16, ref="separate", reduction=reduction
    )

    def step(h, w):
        out = saferegx.safety_loss(h, w, labels, ref_hidden, backend=backend, **kwargs)
        return out.loss.sum(), out.kl

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    results = []
    for fn in (step, compiled):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss, kl = fn(h, w)
        loss.backward()
        results.append((loss.detach(), kl, h.grad, w.grad))
    for eager, comp in zip(*results):
        torch.testing.assert_close(comp.float(), eager.float(), rtol=1e-2, atol=1e-3)


@pytest.fixture
def fresh_autotune(monkeypatch):
    monkeypatch.delenv(autotune.ENV, raising=False)
    autotune.clear()
    yield
    autotune.clear()


@pytest.mark.skipif(
    not ({"triton", "cuda"} <= set(HAVE) and TRITON_COMPILED), reason="needs both fused CUDA backends, Triton compiled"
)
def test_auto_measures_both_backends_with_cuda_events(fresh_autotune, monkeypatch):
    made = []
    real_event = torch.cuda.Event

    def counting_event(*args, **kwargs):
        made.append(kwargs.get("enable_timing"))
        return real_event(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "Event", counting_event)
    hidden, weight, labels, ref_hidden, kwargs = problem(512, 256, 8192, dtype=torch.bfloat16, ref="shared")
    h = hidden.requires_grad_()
    out = saferegx.safety_loss(h, weight.requires_grad_(), labels, ref_hidden, **kwargs)
    out.loss.backward()
    ((key, choice),) = autotune.choices().items()
    assert key.device.startswith("cuda") and key.grads and key.reduction == "scalar"
    assert set(choice.seconds) == {"triton", "cuda"}
    assert all(0 < s < 10 for s in choice.seconds.values()), choice.seconds
    assert choice.backend == min(choice.seconds, key=choice.seconds.get)
    assert made.count(True) == 2 * 2 * autotune.REPEATS  # start/end event per timed call
    torch.testing.assert_close(
        out.loss,
        saferegx.safety_loss(
            hidden.detach(), weight.detach(), labels, ref_hidden, backend=choice.backend, **kwargs
        ).loss,
    )


def test_autotune_times_gpu_work_not_host_time(fresh_autotune):
    """A candidate that enqueues a long GPU spin loses, though its host call returns at once."""

    def run_fn(name):
        torch.cuda._sleep(50_000_000 if name == "slow" else 1_000)

    key = ("test", "spin")
    assert autotune.pick(["slow", "fast"], run_fn, key, device="cuda") == "fast"
    seconds = autotune.choices()[key].seconds
    assert seconds["slow"] > 10 * seconds["fast"]


@pytest.mark.skipif(not TRITON_COMPILED, reason="Triton backend not compiled here")
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_probe_risk_on_cuda(dtype):
    acts = (torch.randn(6, 4, 13, 576, device="cuda") * 3)[:, 2].to(dtype)  # strided slice
    positions = torch.tensor([0, 12, 3, 7, 5, 1], device="cuda")
    w = torch.randn(576, device="cuda") * 0.05
    got = saferegx.probe_risk(acts, positions, w, 0.25, backend="triton")
    want = torch.sigmoid(acts.double()[torch.arange(6), positions] @ w.double() + 0.25)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert saferegx.probe_risk(acts, positions, w, 0.25).dtype == torch.float32  # auto on CUDA


def test_triton_kernels_are_compiled():
    """Not the interpreter (which would copy CUDA tensors to the host and back)."""
    if "triton" not in HAVE:
        pytest.skip("no triton backend")
    assert TRITON_COMPILED
    assert type(_pt._probe_kernel).__name__ == "JITFunction"
