"""Checkpoints: a crashed run resumed from its last checkpoint retraces the uninterrupted run."""

import json
from pathlib import Path

import pytest
import torch

from saferegx.train import checkpoint, train

DETERMINISTIC = ("step", "epoch", "loss", "ce", "kl", "risk", "beta", "lr", "tokens")


class Crash(Exception):
    pass


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(config, tokenizer, make_model, probe_file, tmp_path):
    # EMA momentum, LoRA dropout (torch RNG), warmup + cosine and an epoch boundary all carry state.
    # Bit-for-bit needs the reference cache off: a resumed run recomputes the reference in other
    # batches, equal only to rounding (test_crash_kill.py checks that case with a tolerance).
    common = dict(
        risk="probe",
        probe=probe_file()[0],
        max_steps=5,
        checkpoint_every=2,
        momentum=0.7,
        lora_dropout=0.2,
        warmup_steps=2,
        batch_size=3,
        reference_cache_mb=0,
    )
    straight = train(config(output_dir=str(tmp_path / "a"), **common), model=make_model(), tokenizer=tokenizer).history

    cfg = config(output_dir=str(tmp_path / "b"), **common)
    model, calls = make_model(), []

    def crash_in_step_4(*_):  # two forwards per step (reference, policy)
        calls.append(1)
        if len(calls) == 7:
            raise Crash

    model.model.layers[0].register_forward_hook(crash_in_step_4)
    with pytest.raises(Crash):
        train(cfg, model=model, tokenizer=tokenizer)
    assert checkpoint.latest(tmp_path / "b" / "checkpoints").name == "step-000002"
    with pytest.raises(ValueError, match="resume: true"):  # never silently mix two runs
        train(cfg, model=make_model(), tokenizer=tokenizer)

    cfg.resume = True
    model, calls = make_model(), []  # the base model as before; adapters come from the checkpoint
    model.model.layers[0].register_forward_hook(lambda *_: calls.append(1))
    resumed = train(cfg, model=model, tokenizer=tokenizer).history
    assert len(calls) == 6  # only steps 3, 4, 5 ran again
    assert len(straight) == len(resumed) == 5
    for a, b in zip(straight, resumed):
        assert {k: a[k] for k in DETERMINISTIC} == {k: b[k] for k in DETERMINISTIC}
    logged = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5]
    # keep_checkpoints=2: steps 4 and 5 (the end); no temporary folders left behind
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-000004", "step-000005"]


def test_checkpoint_contents_load_without_pickle(config, tokenizer, make_model, tmp_path):
    from safetensors.torch import load_file

    cfg = config(max_steps=1, output_dir=str(tmp_path / "c"))
    result = train(cfg, model=make_model(), tokenizer=tokenizer)
    path = checkpoint.latest(tmp_path / "c" / "checkpoints")
    weights = load_file(path / "model.safetensors")
    trainable = {n: p for n, p in result.model.named_parameters() if p.requires_grad}
    assert weights.keys() == trainable.keys() and all("lora_" in n for n in weights)
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, trainable[name].detach())
    state = torch.load(path / "state.pt", weights_only=True)
    assert set(state) == {"optimizer", "scheduler", "rng", "data", "schedule"}
    assert json.loads((path / "meta.json").read_text())["config"] == cfg.to_dict()


def test_resume_refuses_a_changed_config(config, tokenizer, make_model, tmp_path):
    out = str(tmp_path / "d")
    train(config(max_steps=1, output_dir=out), model=make_model(), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="lr"):
        train(config(max_steps=2, output_dir=out, lr=1e-3, resume=True), model=make_model(), tokenizer=tokenizer)


def test_an_unfinished_temporary_folder_is_not_a_checkpoint(tmp_path):
    root = tmp_path / "ck"
    (root / ".tmp-step-000009-x").mkdir(parents=True)
    (root / "step-000003").mkdir()
    assert checkpoint.latest(root) == Path(root / "step-000003")
