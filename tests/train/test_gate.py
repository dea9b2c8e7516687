"""kl_gate: a sequence whose beta is below the gate trains with beta = 0, and the reference never
runs on it; the pre-pass risk the gate reads is the reference's own probe read."""

import json

import pytest
import torch

import saferegx
import saferegx.train.loop as loop
from saferegx.train import checkpoint, train
from saferegx.train.batches import IGNORE_INDEX, DataOrder, collate, load_examples

DETERMINISTIC = ("step", "epoch", "loss", "ce", "kl", "risk", "beta", "gated_out", "lr", "tokens")


@pytest.fixture
def counted_reference_pass(monkeypatch):
    """The real reference pass, recording the prompts of the sequences it runs on; ``.widths``
    holds each sub-batch's width."""
    seen = RecordedPasses()
    real = loop.reference_pass

    def counting(policy, reference, batch, *args, **kwargs):
        seen.append(list(batch.prompts))
        seen.widths.append(batch.input_ids.shape[1])
        return real(policy, reference, batch, *args, **kwargs)

    monkeypatch.setattr(loop, "reference_pass", counting)
    return seen


class RecordedPasses(list):
    """The prompts of each reference pass, in order, and (``widths``) each pass's width."""

    def __init__(self):
        super().__init__()
        self.widths: list[int] = []


def reference_risk(model, batch, probe):
    """The probe read by hand from the full reference forward (adapters off) at the prompt's end."""
    with torch.no_grad(), model.disable_adapter():
        hs = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True
        ).hidden_states
    acts = torch.stack([hs[i + 1] for i in probe.layers]).mean(0)
    risk = torch.sigmoid(acts[torch.arange(len(batch.prompts)), batch.prompt_pos] @ probe.weight + probe.bias)
    return torch.where(torch.isnan(batch.risk), risk, batch.risk)


def first_batch(cfg, tokenizer):
    examples = load_examples(cfg.data)
    idx = DataOrder(len(examples), cfg.batch_size, cfg.seed).next()
    return collate(tokenizer, [examples[i] for i in idx], cfg.max_length)


def test_gated_step_equals_the_step_with_beta_zeroed_below_the_gate(
    config, tokenizer, lora_model, probe_file, counted_reference_pass
):
    path, probe = probe_file("last")
    cfg = config(risk="probe", probe=path, max_steps=1, schedule_mode="sequence", batch_size=7)
    batch = first_batch(cfg, tokenizer)
    model = lora_model()
    beta = 0.1 + 0.8 * reference_risk(model, batch, probe)
    g = float(beta.sort().values[3])  # gates out the 3 lowest of 7, keeps 4
    cfg = config(risk="probe", probe=path, max_steps=1, schedule_mode="sequence", batch_size=7, kl_gate=g)
    zeroed = torch.where(beta < g, torch.zeros_like(beta), beta)
    assert 0 < int((zeroed == 0).sum()) < len(beta)

    # the same step by hand: one fused call over every row, the zeroed beta as kl_weight
    with torch.no_grad():
        kw = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        policy = model(**kw).hidden_states[-1]
        with model.disable_adapter():
            ref = model(**kw).hidden_states[-1]
    valid = batch.labels != IGNORE_INDEX
    seq = valid.nonzero()[:, 0]
    alpha = (1 - beta).clamp(0.1, 0.9)  # the schedule's alpha: the gate zeroes beta alone
    want = saferegx.safety_loss(
        policy[valid],
        model.get_base_model().lm_head.weight,
        batch.labels[valid],
        ref[valid],
        ce_weight=alpha[seq],
        kl_weight=zeroed[seq],
    )

    got = train(cfg, model=model, tokenizer=tokenizer).history[0]
    n = batch.n_tokens
    assert got["loss"] == pytest.approx(want.loss.item(), rel=1e-5)
    # the logged KL is the gated-in rows' alone: the others' reference logits were never formed
    assert got["kl"] == pytest.approx((want.kl * (zeroed[seq] > 0)).sum().item() / n, rel=1e-4)
    assert got["ce"] == pytest.approx(want.ce.sum().item() / n, rel=1e-5)
    assert got["beta"] == pytest.approx(zeroed.mean().item(), rel=1e-5)
    assert got["gated_out"] == pytest.approx(3 / 7)
    # the reference ran once, on exactly the gated-in sequences
    kept = {p for p, b in zip(batch.prompts, zeroed) if b > 0}
    assert len(counted_reference_pass) == 1 and set(counted_reference_pass[0]) == kept
    assert 0 < got["ref_seconds"] < got["seconds"]
    # ... cut to the longest of them (its loss rows are those of the full width: loss above)
    longest = max(int(m.sum()) for m, b in zip(batch.attention_mask, zeroed) if b > 0)
    assert counted_reference_pass.widths == [longest]


def test_select_cuts_the_padding_to_the_longest_selected_sequence(config, tokenizer):
    batch = first_batch(config(batch_size=7), tokenizer)
    lengths = batch.attention_mask.sum(1)
    short = lengths.argsort()[:3].tolist()
    sub = batch.select(short)
    assert sub.input_ids.shape == (3, int(lengths[short].max()))
    assert sub.input_ids.shape[1] < batch.input_ids.shape[1]  # the data's lengths differ: a real cut
    assert torch.equal(sub.labels, batch.labels[short, : sub.labels.shape[1]])
    assert (batch.labels[short, sub.labels.shape[1] :] == IGNORE_INDEX).all()  # only padding cut
    assert torch.equal(sub.prompt_pos, batch.prompt_pos[short]) and sub.prompts == [batch.prompts[i] for i in short]


def test_gate_zero_changes_nothing(config, tokenizer, lora_model, probe_file):
    path, _ = probe_file("last")
    common = dict(risk="probe", probe=path, max_steps=3, schedule_mode="sequence", reference_cache_mb=0)
    a = train(
        config(output_dir=str(config().output_dir) + "-a", **common), model=lora_model(), tokenizer=tokenizer
    ).history
    b = train(
        config(output_dir=str(config().output_dir) + "-b", kl_gate=0.0, **common),
        model=lora_model(),
        tokenizer=tokenizer,
    ).history
    assert [{k: r[k] for k in DETERMINISTIC} for r in a] == [{k: r[k] for k in DETERMINISTIC} for r in b]
    assert all(r["gated_out"] is None for r in a)


def test_batch_mode_gates_the_batch_beta(config, tokenizer, lora_model, probe_file, counted_reference_pass):
    path, _ = probe_file("last")
    cfg = config(risk="probe", probe=path, max_steps=3, schedule_mode="batch", kl_gate=0.99, reference_cache_mb=0)
    h = train(cfg, model=lora_model(), tokenizer=tokenizer).history
    assert all(r["beta"] == 0 and r["kl"] == 0 and r["gated_out"] == 1 for r in h)
    assert counted_reference_pass == []  # every batch gated out: the reference never ran
    assert all(r["ref_seconds"] == 0.0 for r in h)


def test_resume_with_a_gate_retraces_the_uninterrupted_run(
    config, tokenizer, make_model, lora_model, probe_file, tmp_path
):
    path, probe = probe_file("last")
    everything = first_batch(config(batch_size=7), tokenizer)
    g = float((0.1 + 0.8 * reference_risk(lora_model(), everything, probe)).median())
    common = dict(
        risk="probe",
        probe=path,
        max_steps=5,
        checkpoint_every=2,
        batch_size=3,
        schedule_mode="sequence",
        kl_gate=g,
        reference_cache_mb=0,
        lora_dropout=0.2,
    )
    straight = train(config(output_dir=str(tmp_path / "a"), **common), model=make_model(), tokenizer=tokenizer).history
    assert any(0 < r["gated_out"] < 1 for r in straight)  # the gate splits some batches

    cfg = config(output_dir=str(tmp_path / "b"), **common)
    model, policy_passes = make_model(), []

    def crash_in_step_4(*_):
        if torch.is_grad_enabled():  # the policy pass (the reference and the pre-pass run no_grad)
            policy_passes.append(1)
            if len(policy_passes) == 4:
                raise RuntimeError("crash")

    model.model.layers[0].register_forward_hook(crash_in_step_4)
    with pytest.raises(RuntimeError, match="crash"):
        train(cfg, model=model, tokenizer=tokenizer)
    assert checkpoint.latest(tmp_path / "b" / "checkpoints").name == "step-000002"
    cfg.resume = True
    resumed = train(cfg, model=make_model(), tokenizer=tokenizer).history
    for a, b in zip(straight, resumed):
        assert {k: a[k] for k in DETERMINISTIC} == {k: b[k] for k in DETERMINISTIC}
    assert len(resumed) == 5
    table = [json.loads(line) for line in open(tmp_path / "b" / "risk_table.jsonl")]
    assert len(table) == 7 and all(0 <= r["probe"] <= 1 for r in table)
