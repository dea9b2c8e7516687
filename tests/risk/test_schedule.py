import pytest
import torch

from saferegx.risk.schedule import RiskSchedule, expand_to_tokens


def test_sequence_mode_linear_beta_and_clamped_alpha():
    sched = RiskSchedule(mode="sequence")
    risk = torch.tensor([0.0, 0.5, 1.0])
    alpha, beta = sched(risk)
    torch.testing.assert_close(beta, torch.tensor([0.1, 0.5, 0.9]))
    torch.testing.assert_close(alpha, torch.tensor([0.9, 0.5, 0.1]))


def test_alpha_modes():
    risk = torch.tensor([1.0])
    assert RiskSchedule(mode="sequence", beta_min=0.0, beta_max=1.0)(risk)[0].item() == pytest.approx(0.1)
    assert RiskSchedule(mode="sequence", beta_min=0.0, beta_max=1.0, alpha="complement")(risk)[
        0
    ].item() == pytest.approx(0.0)
    assert RiskSchedule(mode="sequence", alpha="one")(risk)[0].item() == 1.0


def test_batch_mode_uses_mean_risk_for_every_sequence():
    alpha, beta = RiskSchedule(mode="batch")(torch.tensor([0.0, 1.0, 0.5, 0.5]))
    torch.testing.assert_close(beta, torch.full((4,), 0.5))
    torch.testing.assert_close(alpha, torch.full((4,), 0.5))


def test_ema_follows_the_recurrence():
    m = 0.75
    sched = RiskSchedule(mode="batch", momentum=m, beta_min=0.0, beta_max=1.0)
    batches = [torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.2, 0.6])]
    expected = None
    for b in batches:
        s_batch = b.mean().item()
        expected = s_batch if expected is None else m * expected + (1 - m) * s_batch
        _, beta = sched(b)
        assert beta[0].item() == pytest.approx(expected)
    state = sched.state_dict()
    other = RiskSchedule(mode="batch", momentum=m, beta_min=0.0, beta_max=1.0)
    other.load_state_dict(state)
    assert torch.equal(other(torch.ones(1))[1], sched(torch.ones(1))[1])


def test_risk_is_detached():
    risk = torch.tensor([0.3, 0.7], requires_grad=True)
    for mode in ("batch", "sequence"):
        alpha, beta = RiskSchedule(mode=mode)(risk)
        assert not alpha.requires_grad and not beta.requires_grad


def test_expand_with_mask_and_with_index():
    values = torch.tensor([0.2, 0.8])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(expand_to_tokens(values, mask), torch.tensor([0.2, 0.2, 0.0, 0.8, 0.8, 0.8]))
    index = torch.tensor([0, 0, 1, 1, 1])
    torch.testing.assert_close(expand_to_tokens(values, index), torch.tensor([0.2, 0.2, 0.8, 0.8, 0.8]))
    with pytest.raises(ValueError):
        expand_to_tokens(values, torch.ones(3, 4))
    with pytest.raises(TypeError):
        expand_to_tokens(values, torch.tensor([0.0, 1.0]))


def test_bad_settings_are_refused():
    for kwargs in ({"mode": "token"}, {"alpha": "half"}, {"momentum": 1.0}, {"beta_min": 0.9, "beta_max": 0.1}):
        with pytest.raises(ValueError):
            RiskSchedule(**kwargs)


def test_schedule_compiles_without_graph_breaks():
    sched = RiskSchedule(mode="batch", momentum=0.5)
    sched(torch.rand(4))  # initialize the EMA eagerly
    compiled = torch.compile(sched.__call__, fullgraph=True, backend="eager")
    alpha, beta = compiled(torch.rand(4))
    assert beta.shape == (4,)
