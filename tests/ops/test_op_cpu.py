"""The C++ CPU backend against the float64 unfused reference, gradients included."""

import itertools

import pytest
import torch

import saferegx

from _problems import assert_close, make_problem, oracle, rel_err, run

pytestmark = pytest.mark.skipif("cpu" not in saferegx.available_backends(), reason="C++ extension not built")

FP32_TOL = 1e-5


def fused(*args, **kwargs):
    return saferegx.safety_loss(*args, backend="cpu", **kwargs)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """16-row tiles, so 37 rows span two full chunks and a partial one."""
    monkeypatch.setenv("SAFEREGX_CPU_CHUNK", "16")


@pytest.mark.parametrize(
    "kl,reduction,ref,row_weights,grad_weight",
    list(
        itertools.product(
            ["forward", "reverse"],
            ["mean", "sum", "none"],
            ["none", "shared", "separate"],
            [True, False],
            [True, False],
        )
    ),
)
def test_fp32_matches_float64_reference(seed, kl, reduction, ref, row_weights, grad_weight):
    p = make_problem(kl=kl, reduction=reduction, ref=ref, row_weights=row_weights).to(torch.float32)
    got = run(fused, p, grad_weight=grad_weight)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert_close(got, oracle(p, grad_weight), FP32_TOL, f"{kl}/{reduction}/{ref}")


@pytest.mark.parametrize("kl", ["forward", "reverse"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_extreme_logits(seed, kl, reduction):
    """|z| ~ 1e3: the max-shifted statistics must neither overflow nor lose the KL.

    An fp32 logit of 1e3 is itself only good to ~6e-5 (its ulp), so near-one-hot gradients carry
    ~1e-4 relative error in any fp32 implementation: the bar is the unfused fp32 PyTorch's own
    error on the same inputs (measured: both ~5e-4 on dh/dW over 40 seeds), not 1e-5.
    """
    p = make_problem(logit_scale=1e3, ref_noise=0.2, kl=kl, reduction=reduction).to(torch.float32)
    want = oracle(p)
    assert want[1].max() > 100  # the logits really are extreme
    got = run(fused, p)
    unfused = run(saferegx.safety_loss_unfused, p)
    for name, g, u, w in zip(("loss", "ce", "kl", "dh", "dW"), got, unfused, want):
        err, bar = rel_err(g, w), max(5e-5, 3 * rel_err(u, w))
        assert torch.isfinite(g).all() and err <= min(bar, 2e-3), f"{name}: {err:.1e} > {bar:.1e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kl", ["forward", "reverse"])
def test_half_inputs_accumulate_in_fp32(seed, dtype, kl):
    """Logit tiles are fp32 even for bf16/fp16 inputs: loss and stats at fp32 accuracy."""
    p = make_problem(kl=kl).to(dtype)
    got, want = run(fused, p), oracle(p)
    assert got[0].dtype == torch.float32 and got[3].dtype == dtype and got[4].dtype == dtype
    assert_close(got[:3], want[:3], FP32_TOL, "half stats")
    assert_close((None, None, None) + got[3:], (None, None, None) + want[3:], 1e-2, "half grads")


@pytest.mark.parametrize("v", [1, 7, 1031, 4099])
@pytest.mark.parametrize("n", [1, 16, 17])
def test_odd_sizes(seed, n, v, monkeypatch):
    monkeypatch.setenv("SAFEREGX_CPU_CHUNK", "0")  # the kernel's own chunk choice
    p = make_problem(n=n, d=13, v=v, ignore_every=3).to(torch.float32)
    assert_close(run(fused, p), oracle(p), FP32_TOL, f"n={n} v={v}")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n", [0, 9])
def test_all_ignored_gives_zero_loss_and_gradients(seed, reduction, n):
    p = make_problem(n=n, reduction=reduction).to(torch.float32)
    p.labels[:] = -100
    loss, ce, kl, dh, dw = run(fused, p)
    for t in (loss, ce, kl, dh, dw):
        assert torch.isfinite(t).all() and (t == 0).all()
    assert loss.shape == ((n,) if reduction == "none" else ())


def test_custom_ignore_index(seed):
    p = make_problem(ignore_every=0).to(torch.float32)
    p.labels[::3] = 5
    p.kwargs["ignore_index"] = 5
    got = run(fused, p)
    assert (got[1][::3] == 0).all()
    assert_close(got, oracle(p), FP32_TOL, "ignore_index=5")


def test_kl_vanishes_when_reference_is_policy(seed):
    p = make_problem(logit_scale=50.0).to(torch.float32)
    p.ref_hidden = p.hidden.clone()
    for kl in ("forward", "reverse"):
        out = saferegx.safety_loss(p.hidden, p.weight, p.labels, p.ref_hidden, kl=kl, backend="cpu")
        assert out.kl.abs().max() < 1e-5


def test_zero_weights_give_zero_gradient(seed):
    p = make_problem()
    n = p.hidden.shape[0]
    p.kwargs.update(ce_weight=torch.zeros(n), kl_weight=torch.zeros(n))
    loss, _, _, dh, dw = run(fused, p.to(torch.float32))
    assert loss == 0 and (dh == 0).all() and (dw == 0).all()


def test_no_grad_call_forms_no_gradients(seed):
    p = make_problem().to(torch.float32)
    with torch.no_grad():
        out = saferegx.safety_loss(
            p.hidden.requires_grad_(), p.weight, p.labels, p.ref_hidden, backend="cpu", **p.kwargs
        )
    assert not out.loss.requires_grad
    want = oracle(p)
    assert abs(out.loss.item() - want[0].item()) <= FP32_TOL * abs(want[0].item())


def test_per_row_ce_and_kl_are_detached(seed):
    p = make_problem().to(torch.float32)
    out = saferegx.safety_loss(p.hidden.requires_grad_(), p.weight, p.labels, p.ref_hidden, backend="cpu")
    assert out.loss.requires_grad and not out.ce.requires_grad and not out.kl.requires_grad


def test_auto_picks_the_cpu_kernel_for_cpu_tensors(seed):
    p = make_problem().to(torch.float32)
    auto = saferegx.safety_loss(p.hidden, p.weight, p.labels, p.ref_hidden)
    cpu = saferegx.safety_loss(p.hidden, p.weight, p.labels, p.ref_hidden, backend="cpu")
    assert torch.equal(auto.loss, cpu.loss) and torch.equal(auto.kl, cpu.kl)
