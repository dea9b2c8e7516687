"""The training loop against hand-composed losses, on tiny Llamas with the real tokenizer."""

import copy
import json
from pathlib import Path

import pytest
import torch

from saferegx.train import DataOrder, NonFiniteLossError, collate, load_examples, train
from saferegx.train.model import reference_pass

from conftest import composed_loss

FIELDS = ("loss", "ce", "kl", "risk", "beta")


def first_batch(cfg, tokenizer):
    examples = load_examples(cfg.data)
    idx = DataOrder(len(examples), cfg.batch_size, cfg.seed).next()
    return collate(tokenizer, [examples[i] for i in idx], cfg.max_length)


@pytest.mark.parametrize("mode", ["sequence", "batch"])
def test_first_step_loss_equals_hand_composed_safety_loss(config, tokenizer, lora_model, probe_file, mode):
    path, probe = probe_file("last")
    cfg = config(risk="probe", probe=path, max_steps=1, schedule_mode=mode)
    model = lora_model()
    batch = first_batch(cfg, tokenizer)
    expected, risk, beta = composed_loss(model, batch, probe, mode)
    assert expected.kl.sum() > 0  # the adapters start non-zero: policy != reference
    got = train(cfg, model=model, tokenizer=tokenizer).history[0]
    n = batch.n_tokens
    assert got["loss"] == pytest.approx(expected.loss.item(), rel=1e-5)
    assert got["ce"] == pytest.approx(expected.ce.sum().item() / n, rel=1e-5)
    assert got["kl"] == pytest.approx(expected.kl.sum().item() / n, rel=1e-4)
    assert got["risk"] == pytest.approx(risk.mean().item(), rel=1e-5)
    assert got["beta"] == pytest.approx(beta.mean().item(), rel=1e-5)


def test_mean_pooled_probe_over_a_layer_range(config, tokenizer, lora_model, probe_file):
    path, probe = probe_file("mean", layers=(0, 1))
    cfg = config(risk="probe", probe=path, max_steps=1, schedule_mode="sequence")
    model = lora_model()
    batch = first_batch(cfg, tokenizer)
    with torch.no_grad(), model.disable_adapter():
        hs = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True
        ).hidden_states
    acts = (hs[1] + hs[2]) / 2
    t = torch.arange(acts.shape[1])
    mask = (t[None] <= batch.prompt_pos[:, None]).float()[..., None]  # prompt tokens only
    risk = torch.sigmoid(((acts * mask).sum(1) / mask.sum(1)) @ probe.weight + probe.bias)
    risk = torch.where(torch.isnan(batch.risk), risk, batch.risk)
    got = train(cfg, model=model, tokenizer=tokenizer).history[0]
    assert got["risk"] == pytest.approx(risk.mean().item(), rel=1e-5)


def test_unequal_micro_batches_equal_one_big_batch(config, tokenizer, lora_model, probe_file):
    path, _ = probe_file("last")
    common = dict(risk="probe", probe=path, max_steps=1, max_grad_norm=0.0, momentum=0.5)
    split = config(batch_size=4, grad_accum=2, output_dir=str(config().output_dir) + "-split", **common)
    whole = config(batch_size=7, grad_accum=1, output_dir=str(config().output_dir) + "-whole", **common)
    examples = load_examples(split.data)
    order = DataOrder(len(examples), 4, split.seed)
    sizes = [collate(tokenizer, [examples[i] for i in order.next()], 48).n_tokens for _ in range(2)]
    assert len(examples) == 7 and sizes[0] != sizes[1]  # 4 + 3 sequences, unequal token counts
    a = train(split, model=lora_model(), tokenizer=tokenizer)
    b = train(whole, model=lora_model(), tokenizer=tokenizer)
    for key in FIELDS + ("tokens",):
        assert a.history[0][key] == pytest.approx(b.history[0][key], rel=1e-5), key
    grads_a = {n: p.grad for n, p in a.model.named_parameters() if p.requires_grad}
    grads_b = {n: p.grad for n, p in b.model.named_parameters() if p.requires_grad}
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-7, msg=name)


def test_lora_reference_is_the_base_model(config, tokenizer, make_model):
    base = make_model()
    untouched = copy.deepcopy(base)
    result = train(config(risk="fixed", max_steps=3), model=base, tokenizer=tokenizer)
    h = result.history
    assert h[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts at B = 0: policy == reference
    assert h[2]["kl"] > 1e-4  # and drifts once it trains
    batch = first_batch(config(), tokenizer)
    ref, _ = reference_pass(result.model, None, batch)
    expected = untouched.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    torch.testing.assert_close(ref, expected)


@pytest.mark.parametrize("risk", ["none", "fixed", "probe", "critic"])
def test_risk_sources_run(config, tokenizer, make_model, probe_file, risk):
    cfg = config(risk=risk, probe=probe_file()[0], max_steps=2, grad_accum=2, beta=0.3)
    model = make_model()
    calls = []
    model.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    h = train(cfg, model=model, tokenizer=tokenizer).history
    assert [r["step"] for r in h] == [1, 2]
    assert all(r["loss"] > 0 for r in h)
    lines = cfg.output_dir + "/metrics.jsonl"
    assert [json.loads(line) for line in open(lines)] == h
    if risk == "none":  # plain SFT: CE only, and no reference forward at all
        assert len(calls) == 4 and all(r["kl"] == 0 and r["beta"] is None and r["risk"] is None for r in h)
    else:  # 4 policy passes; reference passes for micro-batches 3, 3, 1 of epoch 1, then the
        # reference cache serves epoch 2's first micro-batch; the probe's pre-pass is one more
        assert len(calls) == 4 + 3 + (risk == "probe")
    if risk == "fixed":
        assert all(r["beta"] == pytest.approx(0.3) and r["risk"] is None for r in h)
    if risk in ("probe", "critic"):
        assert all(0 <= r["risk"] <= 1 and r["beta"] == pytest.approx(0.1 + 0.8 * r["risk"]) for r in h)


def test_full_finetuning_trains_the_head_against_a_frozen_copy(config, tokenizer, make_model):
    model = make_model()
    head_before = model.lm_head.weight.detach().clone()
    result = train(config(finetune="full", risk="fixed", max_steps=2), model=model, tokenizer=tokenizer)
    assert result.history[0]["kl"] == pytest.approx(0.0, abs=1e-6) and result.history[1]["kl"] > 0
    assert not torch.equal(result.model.lm_head.weight, head_before)


def test_lora_on_the_lm_head_is_refused(config, tokenizer, make_model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_model(), LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="LoRA on the LM head"):
        train(config(), model=model, tokenizer=tokenizer)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(config, tokenizer, make_model):
    cfg = config(risk="none", max_steps=5, checkpoint_every=1, keep_checkpoints=5)
    model = make_model()
    calls = []

    def poison(_module, _args, output):  # the third step's forward turns NaN
        calls.append(1)
        return output * float("nan") if len(calls) == 3 else output

    model.model.norm.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss is nan.*step-000002"):
        train(cfg, model=model, tokenizer=tokenizer)
    ckpts = sorted(p.name for p in (Path(cfg.output_dir) / "checkpoints").iterdir())
    assert ckpts == ["step-000001", "step-000002"]
    assert len(open(cfg.output_dir + "/metrics.jsonl").readlines()) == 2


@pytest.mark.parametrize("risk", ["fixed", "probe"])
def test_bf16_reference_stays_close_to_fp32_reference(risk, config, tokenizer, lora_model, probe_file, tmp_path):
    """reference_precision: bf16 changes only the frozen pass (the KL target and the probe read)."""
    extra = {"probe": probe_file()[0], "schedule_mode": "sequence"} if risk == "probe" else {}
    runs = {
        p: train(
            config(max_steps=2, risk=risk, reference_precision=p, output_dir=str(tmp_path / p), **extra),
            model=lora_model(),
            tokenizer=tokenizer,
        ).history
        for p in ("fp32", "bf16")
    }
    for a, b in zip(runs["fp32"], runs["bf16"]):
        assert b["kl"] == pytest.approx(a["kl"], rel=0.05, abs=1e-4)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-2)
        assert b["risk"] == pytest.approx(a["risk"], abs=0.02)
    assert runs["bf16"][0]["kl"] != runs["fp32"][0]["kl"]  # the bf16 pass did take effect


def test_reference_precision_auto_follows_the_hardware():
    from saferegx.train.model import reference_in_bf16

    assert reference_in_bf16("bf16", torch.device("cpu")) and not reference_in_bf16("fp32", torch.device("cpu"))
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert reference_in_bf16("auto", torch.device("cpu")) == native


def test_bf16_autocast_runs_and_stays_close_to_fp32(config, tokenizer, make_model, tmp_path):
    fp32 = train(config(max_steps=1, output_dir=str(tmp_path / "fp32")), model=make_model(), tokenizer=tokenizer)
    bf16 = train(
        config(max_steps=1, bf16=True, output_dir=str(tmp_path / "bf16")), model=make_model(), tokenizer=tokenizer
    )
    assert bf16.history[0]["loss"] == pytest.approx(fp32.history[0]["loss"], rel=2e-2)
    assert bf16.history[0]["loss"] != fp32.history[0]["loss"]  # autocast did take effect


def test_train_steps_yields_each_step_and_interleaved_runs_equal_lone_ones(config, tokenizer, make_model, probe_file):
    """train_steps gives the records train() logs, one per next(), then the TrainResult; two runs
    stepped in turn (as benchmarks/step_cost.py runs its arms) each equal the run alone."""
    from saferegx.train import train_steps

    def cfg(name, risk):
        return config(risk=risk, probe=probe_file()[0], max_steps=3, output_dir=str(Path(cfg_root) / name))

    cfg_root = Path(config().output_dir).parent
    alone = {
        risk: train(cfg(f"alone-{risk}", risk), model=make_model(), tokenizer=tokenizer).history
        for risk in ("none", "probe")
    }
    runs = {
        risk: train_steps(cfg(f"turns-{risk}", risk), model=make_model(), tokenizer=tokenizer)
        for risk in ("none", "probe")
    }
    records, results = {risk: [] for risk in runs}, {}
    while runs:
        for risk in list(runs):
            try:
                records[risk].append(next(runs[risk]))
            except StopIteration as done:
                results[risk] = done.value
                del runs[risk]
    for risk, h in alone.items():
        assert [r["step"] for r in records[risk]] == [1, 2, 3]
        assert results[risk].history == records[risk]
        for got, want in zip(records[risk], h):
            for k in FIELDS:  # risk and beta are None in plain SFT
                assert got[k] == (None if want[k] is None else pytest.approx(want[k], rel=1e-6, abs=1e-9)), k
