"""saferegx.probe_risk: the activation-probe read as an op (C++ on CPU, Triton on GPUs).

``risk[b] = sigmoid(acts[b, positions[b]] . weight + bias)``: the hidden state of the probe layer
at each sequence's last prompt token (pre-generation: causal attention means it saw only the
prompt), read from the frozen reference forward. The result is fp32 and carries no gradient.
"""

import torch

from . import library, registry


def probe_risk(
    acts: torch.Tensor,
    positions: torch.Tensor,
    probe_weight: torch.Tensor,
    probe_bias: torch.Tensor | float,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-sequence risk in [0, 1], ``[B]`` fp32, detached.

    ``acts [B, T, D]`` (any float dtype, any strides), ``positions [B]`` integer token indices,
    ``probe_weight [D]``, ``probe_bias`` a float or one-element tensor. ``backend``: ``"auto"``
    (the device's fused backend with a probe kernel: C++ on CPU, Triton on CUDA), ``"cpu"``,
    ``"triton"`` or ``"unfused"`` (plain PyTorch).
    """
    bias = _check(acts, positions, probe_weight, probe_bias, backend)
    acts, weight = acts.detach(), probe_weight.detach()
    if backend == "auto":
        candidates = registry.auto_candidates(acts.device, probe=True)
        backend = candidates[0] if candidates else "unfused"
    chosen = registry.get(backend)
    if chosen.probe_op is None:
        raise ValueError(f"backend={backend!r} has no probe_risk kernel; use auto, cpu, triton or unfused")
    if not chosen.ready(acts.device):
        raise ValueError(f"backend={backend!r} is not available for acts on {acts.device} here")
    return chosen.probe_op()(acts, positions, weight, bias)


def _check(acts, positions, weight, bias, backend) -> torch.Tensor:
    """Validates the arguments; returns the bias as a one-element tensor on acts' device."""
    if backend != "auto":
        registry.get(backend)  # ValueError naming the choices
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
