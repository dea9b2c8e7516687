"""The main job end to end: every stage of `saferegx demo` on the real embedded SmolLM2 and the real
HarmBench / Do-Not-Answer prompts, at tiny sizes (about two minutes on 2 cores). What it checks is
the plumbing the full run relies on: each stage writes what the next one and the user read, the arms
train as their risk source says, and a rerun reuses every finished stage."""
import json
import math

import pytest
import torch

from saferegx.demo import ARMS, Sizes, run

TINY = Sizes(ref_harmful=8, ref_benign=6, ref_task=3, ref_epochs=1, attack_harmful=6, attack_task=6,
             attack_epochs=1, probe_prompts=80, probe_task=12, eval_harmful=4, eval_task=3, eval_benign=3,
             max_new_tokens=8, batch_size=4)
MODELS = ["reference", *ARMS]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    return out, run(out, TINY, seed=0)


def test_every_model_is_scored_on_the_same_held_out_sets(demo):
    out, results = demo
    assert list(results) == MODELS
    for arm, r in results.items():
        assert (r["n_harmful"], r["n_task"], r["n_benign"]) == (4, 3, 3), arm
        for key in ("asr_refusal", "asr_critic", "utility", "over_refusal"):
            assert 0.0 <= r[key] <= 1.0, (arm, key, r[key])
        samples = [json.loads(line) for line in (out / "samples" / f"{arm}.jsonl").read_text().splitlines()]
        assert [s["set"] for s in samples] == ["harmful"] * 4 + ["task"] * 3 + ["benign"] * 3
        assert json.loads((out / arm / "eval.json").read_text()) == r
    assert json.loads((out / "results.json").read_text())["results"] == results


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
    logs = {arm: [json.loads(line) for line in (out / "runs" / arm / "metrics.jsonl").read_text().splitlines()]
            for arm in ARMS}
    steps = math.ceil(len((out / "data" / "attack.jsonl").read_text().splitlines()) / TINY.batch_size)
    assert all(len(rows) == steps for rows in logs.values())  # same data, same steps in every arm
    assert all(r["beta"] is None and r["kl"] == 0 for r in logs["sft"])  # NaN is logged as null
    assert all(r["beta"] == pytest.approx(0.5) for r in logs["fixed"])
    for arm in ("adaptive-probe", "adaptive-critic"):
        low = ARMS[arm].get("beta_min", 0.1)
        assert all(low - 1e-6 <= r["beta"] <= 0.9 + 1e-6 and 0 <= r["risk"] <= 1 for r in logs[arm]), arm
        # sequence mode: the step's mean beta is the schedule of its mean risk
        assert all(r["beta"] == pytest.approx(low + (0.9 - low) * r["risk"], abs=1e-5) for r in logs[arm]), arm
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


def test_a_rerun_reuses_every_finished_stage(demo):
    out, results = demo
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
               and p.name not in ("report.md", "results.json", "curves.png", "asr_utility.png")}
    assert run(out, TINY, seed=0) == results
    assert {p: p.stat().st_mtime_ns for p in written} == written
