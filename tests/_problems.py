"""Random safety-loss problems and a float64 oracle, shared by the op tests of every backend."""

from dataclasses import dataclass, field

import torch

from saferegx.ops.unfused import safety_loss_unfused


@dataclass
class Problem:
    hidden: torch.Tensor
    weight: torch.Tensor
    labels: torch.Tensor
    ref_hidden: torch.Tensor | None
    kwargs: dict = field(default_factory=dict)

    def to(self, dtype: torch.dtype) -> "Problem":
        """The same problem in `dtype` (per-row weights and labels keep theirs)."""
        cast = lambda t: None if t is None else t.detach().to(dtype)
        kwargs = dict(self.kwargs)
        if kwargs.get("ref_weight") is not None:
            kwargs["ref_weight"] = cast(kwargs["ref_weight"])
        return Problem(cast(self.hidden), cast(self.weight), self.labels, cast(self.ref_hidden), kwargs)


def make_problem(
    n=37,
    d=19,
    v=1031,
    *,
    ref="shared",
    row_weights=True,
    ignore_every=4,
    logit_scale=3.0,
    ref_noise=0.5,
    kl="forward",
    reduction="mean",
) -> Problem:
    """Odd sizes, some ignored rows, logits with std ~logit_scale, a reference near the policy."""
    hidden = torch.randn(n, d, dtype=torch.float64)
    weight = torch.randn(v, d, dtype=torch.float64) * (logit_scale / d**0.5)
    labels = torch.randint(0, v, (n,))
    if ignore_every and n:
        labels[torch.randperm(n)[: max(1, n // ignore_every)]] = -100
    kwargs = {"kl": kl, "reduction": reduction}
    ref_hidden = None
    if ref != "none":
        ref_hidden = hidden + ref_noise * torch.randn_like(hidden)
        if ref == "separate":
            kwargs["ref_weight"] = weight + 0.1 * torch.randn_like(weight) * weight.std()
        if row_weights:
            kwargs["kl_weight"] = torch.rand(n, dtype=torch.float64)
    if row_weights:
        kwargs["ce_weight"] = torch.rand(n, dtype=torch.float64)
    return Problem(hidden, weight, labels, ref_hidden, kwargs)


def run(fn, p: Problem, *, grad_weight=True, backend=None):
    """Loss, ce, kl, dh, dW (dW None when the head is frozen) under a non-uniform grad_output."""
    hidden = p.hidden.detach().clone().requires_grad_(True)
    weight = p.weight.detach().clone().requires_grad_(grad_weight)
    kwargs = dict(p.kwargs)
    if backend is not None:
        kwargs["backend"] = backend
    loss, ce, kl = fn(hidden, weight, p.labels, p.ref_hidden, **kwargs)
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    (loss * upstream).sum().backward()
    return loss.detach(), ce, kl, hidden.grad, weight.grad if grad_weight else None


def oracle(p: Problem, grad_weight=True):
    """The float64 unfused reference on the same (already rounded) inputs."""
    return run(safety_loss_unfused, p.to(torch.float64), grad_weight=grad_weight)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (absolute when want is all zero)."""
    diff = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
    scale = want.double().abs().max().item() if want.numel() else 0.0
    return diff / scale if scale > 0 else diff


def assert_close(got, want, tol, what=""):
    names = ("loss", "ce", "kl", "grad_hidden", "grad_weight")
    for name, g, w in zip(names, got, want):
        if w is None:
            assert g is None, f"{what} {name}: expected no gradient"
            continue
        assert g.shape == w.shape, f"{what} {name}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        assert torch.isfinite(g).all(), f"{what} {name}: non-finite values"
        err = rel_err(g, w)
        assert err <= tol, f"{what} {name}: relative error {err:.2e} > {tol:.0e}"
