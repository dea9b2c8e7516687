"""The main job end to end: every stage of `saferegx demo` on the real embedded SmolLM2, the real
HarmBench / Do-Not-Answer / AdvBench prompts and the real judge, at tiny sizes (a few minutes on 2
cores). What it checks is the plumbing the full run relies on: each stage writes what the next one
and the user read, the arms train as their risk source says (the adaptive ones from the audit's
table, behind its gate), and a rerun reuses every finished stage."""

import json
import math

import pytest
import torch

from saferegx.data.rephrase import topic_of
from saferegx.demo import ARMS, Sizes, run
from saferegx.eval.heldout import HeldOut

TINY = Sizes(
    ref_harmful=8,
    ref_benign=6,
    ref_task=3,
    ref_lookalike=3,
    ref_rephrase=1,
    ref_epochs=1,
    attack_harmful=6,
    attack_task=6,
    attack_epochs=1,
    probe_prompts=80,
    probe_task=12,
    eval_harmful=4,
    eval_advbench=4,
    eval_task=3,
    eval_benign=3,
    eval_lookalike=3,
    max_new_tokens=8,
    batch_size=4,
)
SETS = {"harmbench": 4, "advbench": 4, "utility": 3, "benign": 3, "lookalike": 3}
MODELS = ["reference", *ARMS]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    return out, run(out, TINY, seed=0)


def test_every_model_is_scored_on_the_same_held_out_sets(demo):
    out, results = demo
    assert list(results) == MODELS
    rates = json.loads((out / "results.json").read_text())["rates"]
    for arm, r in results.items():
        assert {name: r[name]["n"] for name in SETS} == SETS, arm
        assert set(rates[arm]) == {
            "harmbench_judge",
            "harmbench_refusal",
            "advbench_judge",
            "advbench_refusal",
            "utility",
            "over_refusal",
            "over_refusal_lookalike",
        }
        for column, x in rates[arm].items():
            assert 0.0 <= x["low"] <= x["rate"] <= x["high"] <= 1.0, (arm, column, x)
        assert sum(c["n"] for c in r["advbench"]["by_category"].values()) == 4
        samples = [json.loads(line) for line in (out / "samples" / f"{arm}.jsonl").read_text().splitlines()]
        assert [s["set"] for s in samples] == [
            s
            for s, n in (("harmbench", 4), ("advbench", 4), ("task", 3), ("benign", 3), ("lookalike", 3))
            for _ in range(n)
        ]
        assert all(isinstance(s["success_judge"], bool) for s in samples if s["set"].endswith("bench"))
        assert json.loads((out / arm / "eval.json").read_text()) == r
    assert json.loads((out / "results.json").read_text())["results"] == results


def test_the_reference_learns_benign_topics_in_several_forms_and_no_held_out_topic(demo):
    out, _ = demo
    prompts = [json.loads(line)["prompt"] for line in (out / "data" / "reference.jsonl").read_text().splitlines()]
    topics = [t[0] for t in map(topic_of, prompts) if t is not None]
    assert len(set(topics)) < len(topics)  # some topic in two forms: a rephrasing was answered
    samples = [json.loads(line) for line in (out / "samples" / "reference.jsonl").read_text().splitlines()]
    held_out = {t[0] for s in samples if s["set"] in ("benign", "lookalike") for t in [topic_of(s["prompt"])] if t}
    assert held_out and not held_out & set(topics)


def test_the_audit_scores_the_attack_data_and_sets_the_gates(demo):
    out, _ = demo
    audit = json.loads((out / "audit" / "audit.json").read_text())
    n = len((out / "data" / "attack.jsonl").read_text().splitlines())
    rows = [json.loads(line) for line in (out / "audit" / "risk.jsonl").read_text().splitlines()]
    assert len(rows) == n and all(0 <= r["probe"] <= 1 and 0 <= r["critic"] <= 1 for r in rows)
    for source in ("probe", "critic"):
        assert audit[source]["n_task"] == 6 and audit[source]["n_harmful"] == n - 6
        assert 0.01 <= audit[source]["gate"] <= 0.1
    assert (out / "audit" / "audit.md").exists() and (out / "audit" / "risk.png").exists()


def test_the_reference_is_a_plain_hf_model_and_the_arms_are_peft_adapters(demo):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = demo
    reference = AutoModelForCausalLM.from_pretrained(out / "reference")
    AutoTokenizer.from_pretrained(out / "reference")
    assert not hasattr(reference, "peft_config")
    for arm in ARMS:
        model = PeftModel.from_pretrained(reference, out / arm / "adapter")
        assert any("lora_A" in name for name, _ in model.named_parameters()), arm
        reference = model.unload()


def test_the_arms_train_as_their_risk_source_says(demo):
    out, _ = demo
    logs = {
        arm: [json.loads(line) for line in (out / "runs" / arm / "metrics.jsonl").read_text().splitlines()]
        for arm in ARMS
    }
    steps = math.ceil(len((out / "data" / "attack.jsonl").read_text().splitlines()) / TINY.batch_size)
    assert all(len(rows) == steps for rows in logs.values())  # same data, same steps in every arm
    assert all(r["beta"] is None and r["kl"] == 0 for r in logs["sft"])  # NaN is logged as null
    assert all(r["beta"] == pytest.approx(0.5) for r in logs["fixed"])
    audit = json.loads((out / "audit" / "audit.json").read_text())
    for arm, source in (("adaptive-probe", "probe"), ("adaptive-critic", "critic")):
        assert ARMS[arm]["beta_min"] == 0
        assert all(0 <= r["beta"] <= 0.9 + 1e-6 and 0 <= r["risk"] <= 1 for r in logs[arm]), arm
        # sequence mode, gated: the step's mean beta is at most the schedule of its mean risk
        assert all(r["beta"] <= 0.9 * r["risk"] + 1e-5 for r in logs[arm]), arm
        assert all(0 <= r["gated_out"] <= 1 for r in logs[arm]), arm
        last = sorted((out / "runs" / arm / "checkpoints").glob("step-*"))[-1]
        cfg = json.loads((last / "meta.json").read_text())["config"]
        assert cfg["kl_gate"] == audit[source]["gate"] and cfg["risk_table"].endswith("audit/risk.jsonl")
    # the first step starts at the reference: the same CE in every arm, whatever the risk source
    first_ce = [rows[0]["ce"] for rows in logs.values()]
    assert max(first_ce) - min(first_ce) < 1e-4 * max(first_ce)


def test_the_report_has_the_table_and_the_plots(demo):
    out, _ = demo
    report = (out / "report.md").read_text()
    for arm in MODELS:
        assert f"| {arm}" in report, arm
    for png in ("curves.png", "asr_utility.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert "Judge: the response-reading judge agrees with" in report and "Cohen's kappa" in report
    assert "AdvBench ASR (judge) by harm category" in report


def test_a_rerun_reuses_every_finished_stage(demo):
    out, results = demo
    written = {
        p: p.stat().st_mtime_ns
        for p in out.rglob("*")
        if p.is_file() and p.name not in ("report.md", "results.json", "curves.png", "asr_utility.png")
    }
    assert run(out, TINY, seed=0) == results
    assert {p: p.stat().st_mtime_ns for p in written} == written
    # the held-out sets are kept as drawn, so a rerun scores the same prompts without redrawing
    sets = HeldOut.from_json(json.loads((out / "data" / "held_out.json").read_text()))
    assert sets.sizes() == SETS and all(len(x) == 2 for x in sets.advbench)
    samples = [json.loads(line) for line in (out / "samples" / "reference.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in samples if s["set"] == "benign"] == sets.benign
