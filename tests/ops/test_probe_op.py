"""saferegx.probe_risk: the C++ kernel and Triton (interpreter) against float64 and the unfused read."""

import pytest
import torch

import saferegx

BACKENDS = ["cpu", "triton"]


def oracle(acts, positions, w, b):
    rows = acts.double()[torch.arange(acts.shape[0]), positions]
    return torch.sigmoid(rows @ w.double() + b)


@pytest.mark.parametrize(
    "backend,dtype",
    [  # Triton kernels take fp32/bf16/fp16, not float64
        ("cpu", torch.float32),
        ("cpu", torch.float64),
        ("cpu", torch.bfloat16),
        ("triton", torch.float32),
        ("triton", torch.bfloat16),
    ],
)
def test_probe_risk_matches_float64(seed, backend, dtype):
    if backend == "triton":
        pytest.importorskip("triton")
    b, t, d = 7, 13, 37
    acts = (torch.randn(b, t, d) * 3).to(dtype)
    positions = torch.randint(0, t, (b,))
    w, bias = torch.randn(d) * 0.3, 0.25
    got = saferegx.probe_risk(acts, positions, w, bias, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (b,)
    torch.testing.assert_close(got.double(), oracle(acts, positions, w, bias), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe_risk_reads_strided_slices(seed, backend):
    """A layer's slice of stacked hidden states [L, B, T, D] is read in place."""
    if backend == "triton":
        pytest.importorskip("triton")
    stacked = torch.randn(4, 5, 11, 24)
    acts = stacked[2].transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous [B, T, D]
    assert not acts.is_contiguous()
    positions = torch.tensor([0, 10, 3, 7, 5])
    w = torch.randn(24)
    got = saferegx.probe_risk(acts, positions, w, torch.tensor([-0.5]), backend=backend)
    torch.testing.assert_close(got.double(), oracle(acts, positions, w, -0.5), rtol=1e-5, atol=1e-6)


def test_probe_risk_has_no_gradient(seed):
    acts = torch.randn(3, 4, 5, requires_grad=True)
    risk = saferegx.probe_risk(acts, torch.tensor([1, 2, 3]), torch.randn(5), 0.0)
    assert not risk.requires_grad


def test_probe_risk_opcheck(seed):
    args = (torch.randn(3, 4, 5), torch.tensor([0, 3, 1]), torch.randn(5), torch.tensor([0.1]))
    torch.library.opcheck(torch.ops.saferegx.probe_risk.default, args)


@pytest.mark.parametrize(
    "bad,exc,name",
    [
        (dict(acts=torch.randn(3, 5)), ValueError, "acts"),
        (dict(positions=torch.zeros(3)), TypeError, "positions"),
        (dict(positions=torch.tensor([0, 1])), ValueError, "positions"),
        (dict(positions=torch.tensor([0, 1, 4])), ValueError, "positions"),
        (dict(positions=torch.tensor([0, -1, 2])), ValueError, "positions"),
        (dict(probe_weight=torch.randn(6)), ValueError, "probe_weight"),
        (dict(probe_bias=torch.zeros(2)), ValueError, "probe_bias"),
        (dict(backend="gpu"), ValueError, "backend"),
    ],
)
def test_probe_risk_bad_input(bad, exc, name):
    args = dict(
        acts=torch.randn(3, 4, 5), positions=torch.tensor([0, 1, 2]), probe_weight=torch.randn(5), probe_bias=0.0
    )
    args.update(bad)
    with pytest.raises(exc, match=name):
        saferegx.probe_risk(**args)
