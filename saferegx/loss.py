"""The risk-adaptive loss, assembled once: per-sequence weights -> per-token rows -> the fused op.

``risk_weighted_loss`` is the one place a trainer turns its policy's response rows, the frozen
reference's rows and each sequence's ``(alpha, beta)`` into ``alpha * CE + beta * KL`` and the
figures it logs; saferegx's loop and ``SafetyTrainer`` call it. ``adaptive_safety_loss`` puts the
risk in front (the probe read or a given risk, then the schedule): the design's single pass.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .ops import probe_risk, safety_loss
from .risk.schedule import RiskSchedule


class AdaptiveSafetyLoss(NamedTuple):
    """The fused loss's outputs and the per-sequence risk and weights it used (all detached but
    ``loss``; ``ce``/``kl`` per row, 0 on ignored rows; ``risk``/``alpha``/``beta`` per sequence,
    None where not used: no risk for given weights, no beta for plain SFT)."""

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    risk: torch.Tensor | None
    alpha: torch.Tensor | None
    beta: torch.Tensor | None

    def totals(self) -> torch.Tensor:
        """``[loss, sum CE, sum KL]`` in float64 on the CPU: what a trainer sums and logs."""
        return torch.stack([self.loss.detach().sum(), self.ce.sum(), self.kl.sum()]).double().cpu()


def response_rows(hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
    """``(rows [n, D], labels [n], seq_index [n])``: the loss rows of ``hidden [B, T, D]`` (the
    positions whose ``labels [B, T]`` are not ignored) and the sequence each row belongs to."""
    mask = labels != ignore_index
    return hidden[mask], labels[mask], mask.nonzero()[:, 0]


def risk_weighted_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ref_hidden: torch.Tensor | None,
    seq_index: torch.Tensor,
    alpha: torch.Tensor | None,
    beta: torch.Tensor | None,
    *,
    ref_weight: torch.Tensor | None = None,
    kl: str = "forward",
    kl_gate: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str = "auto",
) -> AdaptiveSafetyLoss:
    """``alpha_s * CE + beta_s * KL`` over the loss rows, ``s = seq_index[row]`` its sequence.

    ``hidden [N, D]`` policy rows, ``ref_hidden [N, D]`` the reference's rows (None, or
    ``beta=None``: CE only, plain SFT), ``alpha``/``beta [B]`` per sequence (``alpha=None``: 1).
    ``kl_gate``: a sequence whose beta is below it trains with beta = 0 exactly, and no reference
    logits are formed for its rows: the op runs once with the reference on the gated-in rows and
    once CE-only on the others (the same GEMMs as one call). ``ref_hidden`` may then hold just the
    gated-in sequences' rows, in row order (the trainer runs the reference on those alone).
    Rows are cast to the head's dtype (an autocast policy pass gives bf16 rows, the head may be
    fp32). With ``reduction="sum"`` the caller divides by its own token count (the whole
    optimizer step's, so that unequal micro-batches are exact).
    """
    if seq_index.dim() != 1 or seq_index.shape[0] != hidden.shape[0] or seq_index.is_floating_point():
        raise ValueError(f"seq_index must be an integer tensor [{hidden.shape[0]}] (row -> sequence)")
    seq_index = seq_index.long()
    with_kl = ref_hidden is not None and beta is not None
    hidden = hidden.to(weight.dtype)
    ce_weight = None if alpha is None else alpha[seq_index]
    common = dict(kl=kl, ignore_index=ignore_index, backend=backend)
    if not with_kl:
        out = safety_loss(hidden, weight, labels, ce_weight=ce_weight, reduction=reduction, **common)
        return AdaptiveSafetyLoss(out.loss, out.ce, out.kl, None, alpha, None)
    ref_hidden = ref_hidden.to(weight.dtype)
    if kl_gate > 0:
        beta = gate(beta, kl_gate)
        rows_in = (beta >= kl_gate)[seq_index]
        n_in = int(rows_in.sum())
        if ref_hidden.shape[0] not in (n_in, hidden.shape[0]):
            raise ValueError(
                f"ref_hidden has {ref_hidden.shape[0]} rows: give all {hidden.shape[0]} "
                f"rows or the {n_in} rows of the sequences with beta >= kl_gate"
            )
        if n_in < hidden.shape[0]:
            if ref_hidden.shape[0] != n_in:
                ref_hidden = ref_hidden[rows_in]
            out = _split(
                hidden, weight, labels, ref_hidden, ce_weight, beta[seq_index], rows_in, ref_weight, reduction, common
            )
            return AdaptiveSafetyLoss(*out, None, alpha, beta)
    out = safety_loss(
        hidden,
        weight,
        labels,
        ref_hidden,
        ce_weight=ce_weight,
        kl_weight=beta[seq_index],
        ref_weight=ref_weight,
        reduction=reduction,
        **common,
    )
    return AdaptiveSafetyLoss(out.loss, out.ce, out.kl, None, alpha, beta)


def _split(hidden, weight, labels, ref_hidden, ce_weight, kl_weight, rows_in, ref_weight, reduction, common):
    """(loss, ce, kl) of a gated batch: the gated-in rows with the reference, the rest CE-only."""
    rows_out = ~rows_in

    def pick(t, m):
        return None if t is None else t[m]

    part = "none" if reduction == "none" else "sum"
    a = (
        safety_loss(
            hidden[rows_in],
            weight,
            labels[rows_in],
            ref_hidden,
            ce_weight=pick(ce_weight, rows_in),
            kl_weight=kl_weight[rows_in],
            ref_weight=ref_weight,
            reduction=part,
            **common,
        )
        if bool(rows_in.any())
        else None
    )
    b = safety_loss(
        hidden[rows_out], weight, labels[rows_out], ce_weight=pick(ce_weight, rows_out), reduction=part, **common
    )
    ce, kl = b.ce.new_zeros(hidden.shape[0]), b.kl.new_zeros(hidden.shape[0])
    ce[rows_out], kl[rows_out] = b.ce, b.kl
    if a is not None:
        ce[rows_in], kl[rows_in] = a.ce, a.kl
    if reduction == "none":
        loss = b.loss.new_zeros(hidden.shape[0]).index_put((rows_out,), b.loss)
        if a is not None:
            loss = loss.index_put((rows_in,), a.loss)
        return loss, ce, kl
    loss = b.loss if a is None else a.loss + b.loss
    if reduction == "mean":
        loss = loss / (labels != common["ignore_index"]).sum().clamp_min(1)
    return loss, ce, kl


def gate(beta: torch.Tensor, kl_gate: float) -> torch.Tensor:
    """``beta`` with the values below ``kl_gate`` set to exactly 0 (their KL term is dropped)."""
    return torch.where(beta < kl_gate, torch.zeros_like(beta), beta)


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
        risk = probe_risk(
            probe_acts, probe_positions, probe_weight, probe_bias, backend="unfused" if backend == "unfused" else "auto"
        )
    risk = risk.detach()
    if risk.dim() != 1:
        raise ValueError(f"risk must be [B], got {list(risk.shape)}")
    alpha, beta = (schedule or RiskSchedule())(risk)
    out = risk_weighted_loss(
        hidden,
        weight,
        labels,
        ref_hidden,
        seq_index,
        alpha,
        beta,
        ref_weight=ref_weight,
        kl=kl,
        ignore_index=ignore_index,
        reduction=reduction,
        backend=backend,
    )
    return out._replace(risk=risk)
