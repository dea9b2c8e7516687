"""saferegx.loss: the loss assembly (risk_weighted_loss, its KL gate) and adaptive_safety_loss."""

import pytest
import torch

import saferegx
from saferegx.risk.schedule import RiskSchedule

from _problems import make_problem


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gated_loss_equals_one_call_with_beta_zeroed_below_the_gate(seed, reduction):
    """The gate splits the rows into two fused calls; the result is one call's with the zeroed beta
    (the gated-out rows' KL is reported as 0: their reference logits are never formed)."""
    p = make_problem(n=30, d=12, v=97, row_weights=False).to(torch.float32)
    seq = torch.arange(5).repeat_interleave(6)
    alpha, beta = torch.rand(5), torch.tensor([0.02, 0.5, 0.04, 0.9, 0.3])
    gate = 0.25
    h1, h2 = p.hidden.clone().requires_grad_(), p.hidden.clone().requires_grad_()
    for ref in (p.ref_hidden, p.ref_hidden[(beta >= gate)[seq]]):  # all rows, or the gated-in ones
        got = saferegx.risk_weighted_loss(
            h1, p.weight, p.labels, ref, seq, alpha, beta, kl_gate=gate, reduction=reduction
        )
        zeroed = torch.where(beta < gate, torch.zeros_like(beta), beta)
        want = saferegx.safety_loss(
            h2, p.weight, p.labels, p.ref_hidden, ce_weight=alpha[seq], kl_weight=zeroed[seq], reduction=reduction
        )
        torch.testing.assert_close(got.loss, want.loss, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got.ce, want.ce)
        kept = (zeroed > 0)[seq]
        torch.testing.assert_close(got.kl, torch.where(kept, want.kl, torch.zeros_like(want.kl)))
        torch.testing.assert_close(got.beta, zeroed)
        h1.grad = h2.grad = None
        got.loss.sum().backward()
        want.loss.sum().backward()
        torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-8)


def test_gate_with_every_sequence_out_is_ce_only(seed):
    p = make_problem(n=12, d=8, v=31, row_weights=False).to(torch.float32)
    seq = torch.arange(2).repeat_interleave(6)
    got = saferegx.risk_weighted_loss(
        p.hidden, p.weight, p.labels, p.ref_hidden[:0], seq, None, torch.tensor([0.01, 0.02]), kl_gate=0.5
    )
    want = saferegx.safety_loss(p.hidden, p.weight, p.labels)
    torch.testing.assert_close(got.loss, want.loss)
    assert bool((got.kl == 0).all())


def test_ref_rows_of_a_third_length_are_refused(seed):
    p = make_problem(n=12, d=8, v=31, row_weights=False).to(torch.float32)
    seq = torch.arange(2).repeat_interleave(6)
    with pytest.raises(ValueError, match="ref_hidden has 5 rows"):
        saferegx.risk_weighted_loss(
            p.hidden, p.weight, p.labels, p.ref_hidden[:5], seq, None, torch.tensor([0.1, 0.9]), kl_gate=0.5
        )


@pytest.mark.parametrize("mode", ["batch", "sequence"])
def test_adaptive_loss_equals_composing_the_pieces(seed, mode):
    p = make_problem(n=24, d=16, v=211, row_weights=False).to(torch.float32)
    seq_index = torch.arange(4).repeat_interleave(6)
    acts = torch.randn(4, 9, 10)
    positions = torch.tensor([8, 2, 5, 0])
    w = torch.randn(10)
    hidden = p.hidden.clone().requires_grad_()
    out = saferegx.adaptive_safety_loss(
        hidden,
        p.weight,
        p.labels,
        p.ref_hidden,
        seq_index,
        probe_acts=acts,
        probe_positions=positions,
        probe_weight=w,
        probe_bias=0.1,
        schedule=RiskSchedule(mode=mode),
    )
    out.loss.backward()

    risk = saferegx.probe_risk(acts, positions, w, 0.1, backend="unfused")
    alpha, beta = RiskSchedule(mode=mode)(risk)
    hidden2 = p.hidden.clone().requires_grad_()
    by_hand = saferegx.safety_loss(
        hidden2, p.weight, p.labels, p.ref_hidden, ce_weight=alpha[seq_index], kl_weight=beta[seq_index]
    )
    by_hand.loss.backward()
    torch.testing.assert_close(out.risk, risk)
    torch.testing.assert_close(out.beta, beta)
    torch.testing.assert_close(out.loss, by_hand.loss)
    torch.testing.assert_close(hidden.grad, hidden2.grad)
    assert ((out.beta >= 0.1 - 1e-6) & (out.beta <= 0.9 + 1e-6)).all()


def test_adaptive_loss_takes_a_critic_risk(seed):
    p = make_problem(n=6, d=8, v=31, row_weights=False).to(torch.float32)
    seq_index = torch.tensor([0, 0, 0, 1, 1, 1])
    out = saferegx.adaptive_safety_loss(
        p.hidden,
        p.weight,
        p.labels,
        p.ref_hidden,
        seq_index,
        risk=torch.tensor([1.0, 0.0]),
        schedule=RiskSchedule(mode="sequence"),
    )
    torch.testing.assert_close(out.beta, torch.tensor([0.9, 0.1]))


def test_adaptive_loss_keeps_risk_detached(seed):
    p = make_problem(n=6, d=8, v=31, row_weights=False).to(torch.float32)
    acts = torch.randn(2, 3, 5, requires_grad=True)
    w = torch.randn(5, requires_grad=True)
    out = saferegx.adaptive_safety_loss(
        p.hidden.requires_grad_(),
        p.weight,
        p.labels,
        p.ref_hidden,
        torch.tensor([0, 0, 0, 1, 1, 1]),
        probe_acts=acts,
        probe_positions=torch.tensor([2, 1]),
        probe_weight=w,
    )
    out.loss.backward()
    assert acts.grad is None and w.grad is None and not out.risk.requires_grad


def test_adaptive_loss_needs_a_risk_source():
    p = make_problem(n=6, d=8, v=31).to(torch.float32)
    with pytest.raises(ValueError, match="risk"):
        saferegx.adaptive_safety_loss(p.hidden, p.weight, p.labels, p.ref_hidden, torch.zeros(6, dtype=torch.long))
