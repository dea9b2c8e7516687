"""saferegx.probe_risk: the activation-probe read as an op (C++ on CPU, Triton on GPUs).

``risk[b] = sigmoid(acts[b, positions[b]] . weight + bias)``: the hidden state of the probe layer
at each sequence's last prompt token (pre-generation: causal attention means it saw only the
prompt), read from the frozen reference forward. The result is fp32 and carries no gradient.
"""
import torch

from ..risk.probe import probe_risk_reference
from . import library


def probe_risk(acts: torch.Tensor, positions: torch.Tensor, probe_weight: torch.Tensor,
               probe_bias: torch.Tensor | float, *, backend: str = "auto") -> torch.Tensor:
    """Per-sequence risk in [0, 1], ``[B]`` fp32, detached.

    ``acts [B, T, D]`` (any float dtype, any strides), ``positions [B]`` integer token indices,
    ``probe_weight [D]``, ``probe_bias`` a float or one-element tensor. ``backend``: ``"auto"``,
    ``"cpu"`` (C++), ``"triton"``, ``"reference"`` (plain PyTorch).
    """
    bias = _check(acts, positions, probe_weight, probe_bias, backend)
    acts, weight = acts.detach(), probe_weight.detach()
    if backend == "auto":
        backend = "cpu" if acts.device.type == "cpu" and library.CPP_AVAILABLE else (
            "triton" if acts.device.type == "cuda" and _triton_op() is not None else "reference")
    if backend == "reference":
        return probe_risk_reference(acts, positions, weight, bias)
    if backend == "cpu":
        if acts.device.type != "cpu" or not library.CPP_AVAILABLE:
            raise ValueError(f"backend='cpu' needs CPU tensors and the C++ extension (acts on {acts.device})")
        return torch.ops.saferegx.probe_risk(acts, positions, weight, bias)
    op = _triton_op()
    if op is None:
        raise RuntimeError("backend='triton': triton is not installed")
    return op(acts, positions, weight, bias)


def _triton_op():
    """The Triton op, imported on first use (Triton binds interpreter or compiler at import)."""
    try:
        from .probe_triton import probe_risk_triton
    except ImportError:
        return None
    return probe_risk_triton


def _check(acts, positions, weight, bias, backend) -> torch.Tensor:
    """Validates the arguments; returns the bias as a one-element tensor on acts' device."""
    if backend not in ("auto", "cpu", "triton", "reference"):
        raise ValueError(f"backend must be 'auto', 'cpu', 'triton' or 'reference', got {backend!r}")
    if not isinstance(acts, torch.Tensor) or not acts.is_floating_point() or acts.dim() != 3:
        raise ValueError("acts must be a float tensor [B, T, D]")
    b, t, d = acts.shape
    if not isinstance(positions, torch.Tensor) or positions.is_floating_point() or positions.dtype == torch.bool:
        raise TypeError("positions must be an integer tensor [B]")
    if tuple(positions.shape) != (b,):
        raise ValueError(f"positions must have shape [{b}], got {list(positions.shape)}")
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or tuple(weight.shape) != (d,):
        raise ValueError(f"probe_weight must be a float tensor [{d}] (acts have D={d})")
    bias = torch.as_tensor(bias, dtype=torch.float32, device=acts.device).reshape(-1)
    if bias.numel() != 1:
        raise ValueError("probe_bias must be a float or a one-element tensor")
    for name, tensor in (("positions", positions), ("probe_weight", weight)):
        if tensor.device != acts.device:
            raise ValueError(f"{name} is on {tensor.device} but acts is on {acts.device}")
    if not torch.compiler.is_compiling() and acts.device.type != "meta" and b:
        if bool((positions < 0).any()) or bool((positions >= t).any()):
            raise ValueError(f"positions must lie in [0, {t})")
    return bias


if library.CPP_AVAILABLE:
    @torch.library.register_fake("saferegx::probe_risk")
    def _probe_risk_fake(acts, positions, weight, bias):
        return acts.new_empty((acts.shape[0],), dtype=torch.float32)

