"""saferegx.adaptive_safety_loss: probe read, risk schedule and fused loss in one call."""
from typing import NamedTuple

import torch

from ..risk.schedule import RiskSchedule
from .api import safety_loss
from .probe import probe_risk


class AdaptiveSafetyLoss(NamedTuple):
    """The fused loss's outputs plus the per-sequence risk and weights it used (all detached)."""

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    risk: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor


def adaptive_safety_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ref_hidden: torch.Tensor,
    seq_index: torch.Tensor,
    *,
    probe_acts: torch.Tensor | None = None,
    probe_positions: torch.Tensor | None = None,
    probe_weight: torch.Tensor | None = None,
    probe_bias: torch.Tensor | float = 0.0,
    risk: torch.Tensor | None = None,
    schedule: RiskSchedule | None = None,
    ref_weight: torch.Tensor | None = None,
    kl: str = "forward",
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str = "auto",
) -> AdaptiveSafetyLoss:
    """Risk-adaptive loss: ``alpha_s * CE + beta_s * KL(ref || policy)`` per token.

    The risk of each sequence comes from the activation probe (``probe_acts [B, T, D]`` of the
    reference's probe layer, ``probe_positions [B]`` the last prompt tokens, ``probe_weight``,
    ``probe_bias``) or, when given, from ``risk [B]`` (e.g. a Safety Critic's scores).
    ``schedule`` (default: the paper's batch mode, beta 0.1..0.9) turns it into per-sequence
    ``(alpha, beta)``; ``seq_index [N]`` maps each loss row to its sequence. The risk is detached:
    no gradient reaches the probe or the critic.
    """
    if risk is None:
        if probe_acts is None or probe_positions is None or probe_weight is None:
            raise ValueError("give either risk or probe_acts, probe_positions and probe_weight")
        risk = probe_risk(probe_acts, probe_positions, probe_weight, probe_bias,
                          backend="reference" if backend == "reference" else "auto")
    risk = risk.detach()
    if risk.dim() != 1:
        raise ValueError(f"risk must be [B], got {list(risk.shape)}")
    if seq_index.dim() != 1 or seq_index.shape[0] != hidden.shape[0] or seq_index.is_floating_point():
        raise ValueError(f"seq_index must be an integer tensor [{hidden.shape[0]}] (row -> sequence)")
    alpha, beta = (schedule or RiskSchedule())(risk)
    seq_index = seq_index.long()
    out = safety_loss(hidden, weight, labels, ref_hidden, ce_weight=alpha[seq_index],
                      kl_weight=beta[seq_index], ref_weight=ref_weight, kl=kl,
                      ignore_index=ignore_index, reduction=reduction, backend=backend)
    return AdaptiveSafetyLoss(out.loss, out.ce, out.kl, risk, alpha, beta)
