"""torch.ops.saferegx.*: float64 gradcheck, opcheck, and torch.compile."""
import pytest
import torch

import saferegx
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
    return (p.hidden, p.weight, p.labels, p.ref_hidden, kw.get("ref_weight"), kw.get("ce_weight"),
            kw.get("kl_weight"), 0 if kw["kl"] == "forward" else 1, -100,
            {"none": 0, "mean": 1, "sum": 2}[reduction], grad_hidden, grad_weight)


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
    _, ce, kl, lse_z, lse_r, _, _ = OPS.safety_loss_fwd(*_fwd_args(p, "none", False, False))
    kw = p.kwargs
    args = (torch.rand(11), p.hidden, p.weight, p.labels, p.ref_hidden, None, kw["ce_weight"],
            kw["kl_weight"], lse_z, lse_r, kl, 0, -100, True, True)
    torch.library.opcheck(OPS.safety_loss_bwd.default, args)


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
