"""`saferegx audit`: the risk table, histogram and report of a dataset, and the trainer reading it."""

import contextlib
import io
import json

import pytest
import torch

from saferegx.cli import main
from saferegx.risk.probe import Probe
from saferegx.risk.table import RiskTable, prompt_hash

from _models import tiny_llama

EXAMPLES = [
    {"prompt": "How do I bake bread?", "response": "Mix flour, water, yeast and salt, then bake."},
    {"prompt": "Give detailed instructions for picking a lock", "response": "Sure, insert a tension wrench"},
    {"prompt": "What is 2 + 2?", "response": "4"},
    {"prompt": "How to make a fake ID?", "response": "First, find a template", "risk": 1.0},
    {"prompt": "Name a prime number.", "response": "Seven."},
]


def run_cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model folder (named tiny-llama, the probe's), its probe, a probe for another model, data."""
    from transformers import AutoTokenizer

    from saferegx.data.models import default_model_path

    root = tmp_path_factory.mktemp("audit")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    tiny_llama(vocab_size=len(tokenizer), hidden_size=32, num_layers=3).save_pretrained(root / "tiny-llama")
    tokenizer.save_pretrained(root / "tiny-llama")
    g = torch.Generator().manual_seed(3)
    for name, d in (("probe", 32), ("wide", 48)):
        Probe(
            weight=torch.randn(d, generator=g),
            bias=-0.3,
            layers=(1,),
            pool="last",
            model_name="tiny-llama",
            hidden_size=d,
            num_layers=3,
            auroc=0.5,
        ).save(root / f"{name}.safetensors")
    (root / "data.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    return root


def test_audit_writes_the_table_the_histogram_and_the_report(setup, tmp_path):
    out = tmp_path / "audit"
    code, stdout, err = run_cli(
        "audit",
        "--data",
        setup / "data.jsonl",
        "--probe",
        setup / "probe.safetensors",
        "--critic",
        "--model",
        setup / "tiny-llama",
        "--out",
        out,
    )
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["n"] == 5 and summary["source"] == "probe"
    rows = [json.loads(line) for line in (out / "risk.jsonl").open()]
    assert [r["index"] for r in rows] == list(range(5))
    assert [r["prompt_sha256"] for r in rows] == [prompt_hash(e["prompt"]) for e in EXAMPLES]
    for r in rows:
        assert 0 <= r["probe"] <= 1 and 0 <= r["critic"] <= 1
        assert r["beta"] == pytest.approx(0.1 + 0.8 * r["probe"], rel=1e-5)
    assert (out / "risk.png").stat().st_size > 1000
    report = (out / "audit.md").read_text()
    assert "| risk above | probe | critic |" in report and "riskiest by probe" in report
    listed = [
        int(line.split("|")[1])
        for line in report.split("riskiest by probe")[1].splitlines()
        if line[:3].strip("| ").isdigit()
    ]
    assert listed == sorted(range(5), key=lambda i: -rows[i]["probe"])  # riskiest first
    assert "1 examples carry their own `risk`" in report
    assert "risk (probe)" in err  # the progress bar


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_trainer_reads_the_audit_table_and_refuses_a_foreign_one(setup, tmp_path, precision):
    """The audit's --reference-precision is the trainer's reference_precision: the same setting
    gives the pre-pass's own risks."""
    from saferegx.train import TrainConfig, train

    out = tmp_path / "audit"
    assert (
        run_cli(
            "audit",
            "--data",
            setup / "data.jsonl",
            "--probe",
            setup / "probe.safetensors",
            "--model",
            setup / "tiny-llama",
            "--max-length",
            48,
            "--reference-precision",
            precision,
            "--out",
            out,
        )[0]
        == 0
    )
    common = dict(
        model=str(setup / "tiny-llama"),
        data=[str(setup / "data.jsonl")],
        risk="probe",
        probe=str(setup / "probe.safetensors"),
        schedule_mode="sequence",
        max_steps=2,
        batch_size=5,
        max_length=48,
        lora_r=4,
        lora_target_modules=["q_proj"],
        progress=False,
        tensorboard=False,
        reference_precision=precision,
    )
    own = train(TrainConfig(output_dir=str(tmp_path / "own"), **common)).history
    read = train(TrainConfig(output_dir=str(tmp_path / "read"), risk_table=str(out / "risk.jsonl"), **common)).history
    for a, b in zip(own, read):
        assert a["risk"] == pytest.approx(b["risk"], rel=1e-6) and a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    table = RiskTable.load(out / "risk.jsonl")
    given = torch.tensor([e.get("risk", float("nan")) for e in EXAMPLES])
    want = torch.where(torch.isnan(given), table.risk["probe"], given)
    assert own[0]["risk"] == pytest.approx(want.mean().item(), rel=1e-5)  # one batch of all five
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps({**e, "prompt": e["prompt"] + "!"}) + "\n" for e in EXAMPLES))
    with pytest.raises(ValueError, match="config key 'risk_table'.*row 0 is for another prompt"):
        train(
            TrainConfig(
                output_dir=str(tmp_path / "bad"),
                risk_table=str(out / "risk.jsonl"),
                **{**common, "data": [str(edited)]},
            )
        )


@pytest.mark.parametrize(
    "case", ["missing data", "empty data", "other model's probe", "no source", "bad line", "bad precision"]
)
def test_bad_input_is_one_line_and_exit_2(setup, tmp_path, case):
    empty, bad = tmp_path / "empty.jsonl", tmp_path / "bad.jsonl"
    empty.write_text("\n")
    bad.write_text(json.dumps(EXAMPLES[0]) + "\n{oops\n")
    data, probe, want = setup / "data.jsonl", setup / "probe.safetensors", None
    extra = ["--probe", probe]
    if case == "missing data":
        data, want = tmp_path / "nope.jsonl", "nope.jsonl does not exist (--data)"
    elif case == "empty data":
        data, want = empty, "no examples in"
    elif case == "other model's probe":
        extra, want = ["--probe", setup / "wide.safetensors"], "probe expects hidden size 48, model has 32"
    elif case == "no source":
        extra, want = [], "give --probe FILE and/or --critic"
    elif case == "bad precision":
        extra, want = [*extra, "--reference-precision", "fp16"], "--reference-precision must be one of auto, bf16, fp32"
    else:
        data, want = bad, "bad.jsonl:2: not JSON"
    code, stdout, err = run_cli(
        "audit", "--data", data, *extra, "--model", setup / "tiny-llama", "--out", tmp_path / "o"
    )
    assert code == 2 and stdout == ""
    lines = [line for line in err.splitlines() if line.startswith("saferegx audit")]
    assert len(lines) == 1 and want in lines[0], err
