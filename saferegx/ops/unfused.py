"""The unfused PyTorch ops: plain torch that materializes what the fused kernels never hold.

``safety_loss_unfused`` forms the [N, V] logits and lets autograd differentiate: the baseline the
fused backends are measured against and, run in float64, the test oracle. ``probe_risk_unfused``
is the probe read in plain torch, the oracle of the ``probe_risk`` kernels.
"""

import torch
import torch.nn.functional as F


def safety_loss_unfused(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ref_hidden: torch.Tensor | None = None,
    *,
    ce_weight: torch.Tensor | None = None,
    kl_weight: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    kl: str = "forward",
    ignore_index: int = -100,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (loss, per-row CE, per-row KL); computes in fp32 (float64 for float64 inputs)."""
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    valid = labels != ignore_index
    logp = F.log_softmax(hidden.to(acc) @ weight.to(acc).T, dim=-1)
    ce = -logp.gather(1, labels.where(valid, 0).long()[:, None])[:, 0]
    ce = ce.where(valid, 0.0)
    alpha = ce_weight.detach().to(acc) if ce_weight is not None else torch.ones_like(ce)
    if ref_hidden is None:
        kl_rows = torch.zeros_like(ce)
        beta = torch.zeros_like(ce)
    else:
        head = weight if ref_weight is None else ref_weight
        logq = F.log_softmax(ref_hidden.detach().to(acc) @ head.detach().to(acc).T, dim=-1)
        if kl == "forward":  # KL(ref || policy)
            kl_rows = (logq.exp() * (logq - logp)).sum(-1)
        else:  # KL(policy || ref)
            kl_rows = (logp.exp() * (logp - logq)).sum(-1)
        kl_rows = kl_rows.where(valid, 0.0)
        beta = kl_weight.detach().to(acc) if kl_weight is not None else torch.ones_like(ce)
    rows = alpha * ce + beta * kl_rows
    if reduction == "none":
        loss = rows
    elif reduction == "sum":
        loss = rows.sum()
    else:
        loss = rows.sum() / valid.sum().clamp_min(1)
    return loss, ce.detach(), kl_rows.detach()


def probe_risk_unfused(
    acts: torch.Tensor, positions: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | float
) -> torch.Tensor:
    """``sigmoid(acts[b, positions[b]] @ weight + bias)``, ``[B]`` fp32, for ``acts [B, T, D]``."""
    rows = torch.arange(acts.shape[0], device=acts.device)
    a = acts[rows, positions].float()
    bias = torch.as_tensor(bias, dtype=torch.float32, device=acts.device)
    return torch.sigmoid(a @ weight.float() + bias)
