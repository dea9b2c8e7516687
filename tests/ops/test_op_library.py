"""torch.ops.saferegx.*: float64 gradcheck, opcheck, torch.compile, and the integer codes."""

import pytest
import torch

import saferegx
from saferegx import _ext
from saferegx.ops import library

from _problems import make_problem

pytestmark = pytest.mark.skipif("cpu" not in saferegx.available_backends(), reason="C++ extension not built")

OPS = torch.ops.saferegx


@pytest.mark.parametrize("kl", ["forward", "reverse"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ref", ["none", "shared", "separate"])
def test_gradcheck_float64(seed, kl, reduction, ref):
    """Finite differences in float64 (the kernel computes float64 for float64 inputs)."""
    p = make_problem(n=6, d=4, v=9, ref=ref, kl=kl, reduction=reduction, ignore_every=3)

    def f(hidden, weight):
        return saferegx.safety_loss(hidden, weight, p.labels, p.ref_hidden, backend="cpu", **p.kwargs).loss

    # A shared head is a frozen reference too (stop-gradient): perturbing W would move the reference
    # logits, which the op rightly treats as constants, so only hidden is checked there.
    inputs = (p.hidden.clone().requires_grad_(), p.weight.clone().requires_grad_(ref != "shared"))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def _fwd_args(p, reduction, grad_hidden, grad_weight):
    kw = p.kwargs
    return (
        p.hidden,
        p.weight,
        p.labels,
        p.ref_hidden,
        kw.get("ref_weight"),
        kw.get("ce_weight"),
        kw.get("kl_weight"),
        library.KL_MODES[kw["kl"]],
        -100,
        library.REDUCTIONS[reduction],
        grad_hidden,
        grad_weight,
    )


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("ref", ["none", "shared", "separate"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_forward(seed, reduction, ref, dtype):
    p = make_problem(n=11, d=5, v=23, ref=ref, reduction=reduction).to(dtype)
    p.hidden.requires_grad_()
    scalar = reduction != "none"
    args = _fwd_args(p, reduction, scalar, False)
    torch.library.opcheck(OPS.safety_loss_fwd.default, args)


def test_opcheck_backward(seed):
    p = make_problem(n=11, d=5, v=23, reduction="none").to(torch.float32)
    _, ce, kl, _, _ = OPS.safety_loss_fwd(*_fwd_args(p, "none", False, False))
    kw = p.kwargs
    args = (
        torch.rand(11),
        p.hidden,
        p.weight,
        p.labels,
        p.ref_hidden,
        None,
        kw["ce_weight"],
        kw["kl_weight"],
        kl,
        library.KL_MODES["forward"],
        -100,
        True,
        True,
    )
    torch.library.opcheck(OPS.safety_loss_bwd.default, args)


def test_forward_returns_five_outputs(seed):
    """(loss, ce, kl, grad_hidden, grad_weight): no row statistics for the backward."""
    p = make_problem(n=7, d=5, v=13, ref="shared").to(torch.float32)
    out = OPS.safety_loss_fwd(*_fwd_args(p, "mean", True, True))
    assert [tuple(t.shape) for t in out] == [(), (7,), (7,), (7, 5), (13, 5)]


@pytest.mark.parametrize("name", list(library.REDUCTIONS))
def test_reduction_codes_agree_with_cpp(seed, name):
    """Each of library.REDUCTIONS' codes makes the C++ op reduce the rows as its name says."""
    p = make_problem(n=9, d=5, v=17, ref="shared", ignore_every=3).to(torch.float64)
    rows = OPS.safety_loss_fwd(*_fwd_args(p, "none", False, False))[0]
    loss = OPS.safety_loss_fwd(*_fwd_args(p, name, False, False))[0]
    n_valid = (p.labels != -100).sum()
    want = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / n_valid}[name]
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(library.KL_MODES))
def test_kl_mode_codes_agree_with_cpp(seed, name):
    """Each of library.KL_MODES' codes makes the C++ op compute the KL direction its name says."""
    p = make_problem(n=9, d=5, v=17, ref="separate", kl=name, reduction="none")
    kl = OPS.safety_loss_fwd(*_fwd_args(p, "none", False, False))[2]
    _, _, want = saferegx.safety_loss_unfused(p.hidden, p.weight, p.labels, p.ref_hidden, **p.kwargs)
    torch.testing.assert_close(kl, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "field,bad",
    [
        ("reduction", max(library.REDUCTIONS.values()) + 1),
        ("reduction", -1),
        ("kl_mode", max(library.KL_MODES.values()) + 1),
    ],
)
def test_cpp_rejects_unknown_codes(seed, field, bad):
    p = make_problem(n=5, d=4, v=7).to(torch.float32)
    args = list(_fwd_args(p, "mean", False, False))
    args[{"kl_mode": 7, "reduction": 9}[field]] = bad
    with pytest.raises(RuntimeError, match=field):
        OPS.safety_loss_fwd(*args)


def test_cpu_chunk_rows_is_the_kernels(monkeypatch):
    """_ext.cpu_chunk_rows: ~64 MiB of fp32 tiles within 256..1024 rows, SAFEREGX_CPU_CHUNK wins."""
    monkeypatch.delenv("SAFEREGX_CPU_CHUNK", raising=False)
    assert _ext.cpu_chunk_rows(16384, True) == (64 << 20) // (16384 * 4 * 2)
    assert _ext.cpu_chunk_rows(49152, False) == (64 << 20) // (49152 * 4)
    assert _ext.cpu_chunk_rows(49152, True) == 256  # the floor
    assert _ext.cpu_chunk_rows(1000, True) == 1024  # the ceiling
    monkeypatch.setenv("SAFEREGX_CPU_CHUNK", "37")
    assert _ext.cpu_chunk_rows(49152, True) == 37


def test_forward_rejects_gradients_with_reduction_none(seed):
    p = make_problem(n=5, d=4, v=7).to(torch.float32)
    with pytest.raises(RuntimeError, match="scalar reduction"):
        OPS.safety_loss_fwd(*_fwd_args(p, "none", True, False))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_matches_eager(seed, reduction):
    p = make_problem(n=17, d=8, v=97, reduction=reduction, ref="separate").to(torch.float32)

    def step(hidden, weight):
        out = saferegx.safety_loss(hidden, weight, p.labels, p.ref_hidden, backend="cpu", **p.kwargs)
        return out.loss.sum(), out.kl

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (step, compiled):
        h, w = p.hidden.clone().requires_grad_(), p.weight.clone().requires_grad_()
        loss, kl = fn(h, w)
        loss.backward()
        results.append((loss.detach(), kl, h.grad, w.grad))
    for eager, comp in zip(*results):
        torch.testing.assert_close(comp, eager, rtol=1e-6, atol=1e-6)
