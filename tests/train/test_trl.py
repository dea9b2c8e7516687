"""SafeSFTTrainer: saferegx's loss inside TRL's SFTTrainer, checked against saferegx's own loop."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback

from saferegx.train import train
from saferegx.train.batches import IGNORE_INDEX, collate
from saferegx.trl import SafeSFTConfig, SafeSFTTrainer, as_prompt_completion, trainer_batch

from conftest import composed_loss

README = Path(__file__).resolve().parents[2] / "README.md"
MAX_LENGTH = 128  # no example is cut, so saferegx's and TRL's truncation rules never differ here
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def sft_args(tmp_path, **kw):
    """A small CPU run in fp32 (TRL's defaults are bf16 and gradient checkpointing)."""
    values = dict(
        output_dir=str(tmp_path / "trl"),
        max_steps=2,
        per_device_train_batch_size=3,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=0,
        dataloader_num_workers=0,
        max_length=MAX_LENGTH,
        reference_precision="fp32",
        risk="fixed",
        disable_tqdm=True,
    )
    values.update(kw)
    return SafeSFTConfig(**values)


def same_tokens(tokenizer, examples):
    """saferegx's examples as TRL prompt/completion rows that tokenize to saferegx's own ids: the
    prompt as the chat template renders it before the answer (what saferegx.lm.format_prompt
    encodes), the completion the response (TRL appends EOS, as saferegx does)."""
    return Dataset.from_list(
        [
            {
                "prompt": tokenizer.apply_chat_template(
                    [{"role": "user", "content": e["prompt"]}], tokenize=False, add_generation_prompt=True
                ),
                "completion": e["response"],
                "risk": e.get("risk"),
            }
            for e in examples
        ]
    )


def conversations(examples):
    """The examples as conversational ``messages``, each after a short first exchange."""
    return Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": "Hello!"},
                    {"role": "assistant", "content": "Hi, how can I help?"},
                    {"role": "user", "content": e["prompt"]},
                    {"role": "assistant", "content": e["response"]},
                ]
            }
            for e in examples
        ]
    )


def test_loss_is_the_hand_composed_loss(tmp_path, tokenizer, lora_model, probe_file, examples):
    """A PEFT model whose adapters are non-zero (so the KL is too): the trainer's loss on a batch is
    the loss written out from saferegx.safety_loss on saferegx's own collated batch."""
    path, probe = probe_file("last")
    model = lora_model()
    trainer = SafeSFTTrainer(
        model=model,
        args=sft_args(tmp_path, risk="probe", probe=path, schedule_mode="sequence"),
        train_dataset=same_tokens(tokenizer, examples),
        processing_class=tokenizer,
    )
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in (2, 3, 4)])
    batch = collate(tokenizer, examples[2:5], MAX_LENGTH)  # saferegx's own tokens, labels and prompt ends
    assert torch.equal(inputs["input_ids"], batch.input_ids)
    assert torch.equal(inputs["shift_labels"], batch.labels)
    assert torch.equal(trainer_batch(inputs).prompt_pos, batch.prompt_pos)
    expected, risk, beta = composed_loss(model, batch, probe, "sequence")
    assert expected.kl.sum() > 1e-3  # a real KL term
    with torch.no_grad():
        loss, out = trainer.compute_loss(model, inputs, return_outputs=True)
    assert loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)
    torch.testing.assert_close(out["risk"], risk)  # examples[4]'s given risk (1.0) included
    torch.testing.assert_close(out["beta"], beta)
    n = int((batch.labels != IGNORE_INDEX).sum())
    with torch.no_grad():  # HF's count of an accumulated batch divides the sum instead
        half = trainer.compute_loss(model, inputs, num_items_in_batch=torch.tensor(2 * n))
    assert half.item() == pytest.approx(expected.loss.item() / 2, rel=1e-5)


def test_first_step_is_saferegx_trains_first_step(
    tmp_path, tokenizer, make_model, probe_file, config, data_file, examples, monkeypatch
):
    """LoRA by peft_config, the probe in batch mode, all examples in one batch: the first step's
    loss, CE, risk and beta are those of saferegx.train.train on the same model and data."""
    path, _ = probe_file("last")
    cfg = config(
        data=data_file(examples),
        risk="probe",
        probe=path,
        batch_size=len(examples),
        max_steps=1,
        max_length=MAX_LENGTH,
        lora_target_modules=LORA["target_modules"],
    )
    ours = train(cfg, model=make_model(), tokenizer=tokenizer).history[0]

    losses = []
    original = SafeSFTTrainer.compute_loss

    def spy(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        losses.append(loss.item())
        return loss

    monkeypatch.setattr(SafeSFTTrainer, "compute_loss", spy)
    trainer = SafeSFTTrainer(
        model=make_model(),
        peft_config=LoraConfig(**LORA),
        processing_class=tokenizer,
        args=sft_args(tmp_path, risk="probe", probe=path, max_steps=1, per_device_train_batch_size=len(examples)),
        train_dataset=same_tokens(tokenizer, examples),
    )
    trainer.train()
    log = trainer.state.log_history[0]
    assert losses[0] == pytest.approx(ours["loss"], rel=1e-5)
    assert log["loss"] == pytest.approx(ours["loss"], rel=1e-5)
    for key in ("ce", "risk", "beta"):
        assert log[key] == pytest.approx(ours[key], rel=1e-5), key
    assert log["kl"] == ours["kl"] == 0.0  # LoRA starts at B = 0: the policy is the reference


class GradAtStep(TrainerCallback):
    """The trainable parameters' gradients just before the optimizer step."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradient_accumulation_over_unequal_micro_batches_is_one_big_batch(
    tmp_path, tokenizer, lora_model, probe_file, examples
):
    """Micro-batches of 3 and 2 sequences (and unequal token counts), normalized by HF's global
    count, give the gradient of one batch of 5."""
    path, _ = probe_file("last")
    grads = []
    for batch_size, accum in ((5, 1), (3, 2)):
        grab = GradAtStep()
        trainer = SafeSFTTrainer(
            model=lora_model(),
            processing_class=tokenizer,
            callbacks=[grab],
            args=sft_args(
                tmp_path,
                risk="probe",
                probe=path,
                schedule_mode="sequence",
                max_steps=1,
                per_device_train_batch_size=batch_size,
                gradient_accumulation_steps=accum,
                max_grad_norm=0.0,
            ),
            train_dataset=same_tokens(tokenizer, examples[:5]),
        )
        trainer.train()
        grads.append(grab.grads)
    big, accumulated = grads
    assert big.keys() == accumulated.keys() and big
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-5, atol=1e-7)


def test_messages_train_on_the_last_assistant_turn(tmp_path, tokenizer, probe_file, examples):
    """Conversations: the prompt is every turn before the last assistant turn, the labels cover
    that turn alone, the probe reads the last prompt token; a few steps log ce/kl/risk/beta."""
    from _models import tiny_llama

    path, _ = probe_file("last")
    model = tiny_llama(vocab_size=len(tokenizer), hidden_size=32, num_layers=3)
    trainer = SafeSFTTrainer(
        model=model,
        peft_config=LoraConfig(**LORA),
        processing_class=tokenizer,
        args=sft_args(
            tmp_path,
            risk="probe",
            probe=path,
            max_steps=3,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
        ),
        train_dataset=conversations(examples),
    )
    row = trainer.train_dataset[0]
    trained = tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX])
    assert trained.startswith(examples[0]["response"]) and "Hi, how can I help?" not in trained
    assert row["saferegx_prompt"] == examples[0]["prompt"]  # what a critic would judge
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    pos = trainer_batch(inputs).prompt_pos
    for k in range(3):  # the last prompt token closes the generation prompt "<|im_start|>assistant\n"
        ids = inputs["input_ids"][k, : pos[k] + 1].tolist()
        assert tokenizer.decode(ids).endswith(examples[k]["prompt"] + "<|im_end|>\n<|im_start|>assistant\n")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logs) == 3
    for r in logs:
        assert all(math.isfinite(r[k]) for k in ("loss", "ce", "kl", "risk", "beta"))
        assert 0.0 <= r["risk"] <= 1.0 and 0.1 <= r["beta"] <= 0.9
    assert logs[-1]["kl"] > 0  # the adapters moved away from the reference
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert not trainer.model.get_base_model().lm_head.weight.requires_grad


class RecordingCritic:
    """Scores the prompts it is shown: 0.9 for the two harmful ones, 0.2 for the rest."""

    def __init__(self):
        self.seen = []

    def score(self, prompts, responses=None):
        self.seen.extend(prompts)
        return torch.tensor([0.9 if "lock" in p or "fake ID" in p else 0.2 for p in prompts])


def test_critic_judges_the_prompt_text_and_evaluation_logs(tmp_path, tokenizer, lora_model, examples):
    """The critic sees each conversation's last user turn through HF's dataloader (the column
    survives remove_unused_columns); evaluation reports eval_ce/kl/risk/beta and leaves the
    batch-mode EMA of training as it was."""
    critic = RecordingCritic()
    trainer = SafeSFTTrainer(
        model=lora_model(),
        critic=critic,
        processing_class=tokenizer,
        args=sft_args(tmp_path, risk="critic", max_steps=2, momentum=0.5),
        train_dataset=conversations(examples),
    )
    trainer.train()
    assert critic.seen and set(critic.seen) <= {e["prompt"] for e in examples}
    ema = trainer.schedule.ema.clone()
    metrics = trainer.evaluate(conversations(examples[:4]))  # messages given to evaluate are split too
    assert {"eval_loss", "eval_ce", "eval_kl", "eval_risk", "eval_beta"} <= set(metrics)
    assert metrics["eval_risk"] == pytest.approx((0.2 + 0.9 + 0.2 + 0.2) / 4, rel=1e-6)  # examples[4]'s 1.0 is not in
    torch.testing.assert_close(trainer.schedule.ema, ema)


def test_full_fine_tuning_against_ref_model(tmp_path, tokenizer, make_model, examples):
    """Conversational prompt/completion, every weight trains, the reference is ref_model (frozen)."""
    reference = make_model()
    frozen = {n: p.detach().clone() for n, p in reference.named_parameters()}
    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": e["prompt"]}],
                "completion": [{"role": "assistant", "content": e["response"]}],
            }
            for e in examples
        ]
    )
    trainer = SafeSFTTrainer(
        model=make_model(),
        ref_model=reference,
        processing_class=tokenizer,
        train_dataset=data,
        args=sft_args(tmp_path, risk="fixed", beta=0.5, max_steps=2, learning_rate=1e-3),
    )
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert [r["beta"] for r in logs] == [0.5, 0.5] and "risk" not in logs[0]
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-6) and logs[1]["kl"] > 0
    assert all(torch.equal(p, frozen[n]) for n, p in reference.named_parameters())
    assert all(p.requires_grad for p in trainer.model.parameters())


def test_bf16_trains_with_the_reference_in_bf16(tmp_path, tokenizer, make_model, probe_file, examples):
    """TRL's default precision: bf16 autocast for the policy (on a CPU here), the reference in bf16
    as in saferegx's loop, the loss still computed in fp32 by the op."""
    path, _ = probe_file("last")
    trainer = SafeSFTTrainer(
        model=make_model(),
        peft_config=LoraConfig(**LORA),
        processing_class=tokenizer,
        args=sft_args(tmp_path, bf16=True, risk="probe", probe=path, max_steps=2),
        train_dataset=conversations(examples),
    )
    assert trainer.reference_bf16
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logs) == 2 and all(math.isfinite(r["loss"]) and math.isfinite(r["kl"]) for r in logs)


def test_messages_are_split_at_the_last_assistant_turn():
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
    ]
    (row,) = as_prompt_completion(Dataset.from_list([{"messages": chat}]))
    assert row["prompt"] == chat[:4] and row["completion"] == chat[4:]
    assert row["saferegx_prompt"] == "2 + 2?"
    with pytest.raises(ValueError, match="no assistant turn"):
        as_prompt_completion(Dataset.from_list([{"messages": chat[:2]}]))
    with pytest.raises(ValueError, match="ends with a non-assistant turn"):
        as_prompt_completion(Dataset.from_list([{"messages": chat[:4]}]))
    with pytest.raises(ValueError, match="prompt/completion"):
        as_prompt_completion(Dataset.from_list([{"text": "no prompt to judge"}]))


@pytest.mark.parametrize(
    "field,value",
    [
        ("risk", "critics"),
        ("schedule_mode", "token"),
        ("alpha", "half"),
        ("kl", "sideways"),
        ("reference_precision", "half"),
        ("backend", "gpu"),
        ("beta", 1.5),
        ("beta", "0.5"),
        ("beta_min", -0.1),
        ("kl_gate", 2.0),
        ("momentum", 1.0),
        ("packing", True),
        ("padding_free", True),
        ("completion_only_loss", False),
    ],
)
def test_bad_config_values_name_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"SafeSFTConfig field '{field}'"):
        sft_args(tmp_path, **{field: value})


def test_config_relations_and_references_are_checked(tmp_path, tokenizer, make_model, examples):
    with pytest.raises(ValueError, match="field 'beta_max' must be >= beta_min"):
        sft_args(tmp_path, beta_min=0.6, beta_max=0.5)
    with pytest.raises(ValueError, match="field 'probe' must name a probe file"):
        sft_args(tmp_path, risk="probe")
    data = same_tokens(tokenizer, examples[:2])
    with pytest.raises(ValueError, match="field 'probe': no probe file"):
        SafeSFTTrainer(
            model=make_model(),
            args=sft_args(tmp_path, risk="probe", probe=str(tmp_path / "none")),
            train_dataset=data,
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="needs a safe reference"):
        SafeSFTTrainer(model=make_model(), args=sft_args(tmp_path), train_dataset=data, processing_class=tokenizer)


def readme_snippet() -> str:
    """The Python block of README.md's "Fine-tune with TRL" section."""
    section = README.read_text().split("## Fine-tune with TRL", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def as_plain_trl(snippet: str) -> str:
    """The script before saferegx: each line marked ``# was: ...`` back to what it was."""
    return "\n".join(re.sub(r"^(\s*).*# was: (.*)$", r"\1\2", line) for line in snippet.splitlines())


def test_readme_snippet_is_a_plain_trl_script_with_its_import_and_probe_changed(
    tmp_path, tokenizer, make_model, probe_file, examples, monkeypatch
):
    """The README's script runs as it stands, on the tiny model (its folder name replaced) and on a
    CPU (the machine's settings put into the config); the plain TRL script it came from differs in
    its import, its trainer's class and its config line (the probe), and runs too."""
    snippet = readme_snippet()
    plain = as_plain_trl(snippet)
    changed = [a for a, b in zip(snippet.splitlines(), plain.splitlines(), strict=True) if a != b]
    assert len(changed) == 3, changed  # the import, the trainer's class, the config with the probe
    assert "from trl import SFTConfig, SFTTrainer" in plain and "saferegx" not in plain
    assert 'probe="probe.safetensors"' in changed[2] and "SafeSFTTrainer(" in changed[1]
    model_id = re.search(r'model="([^"]+)"', snippet).group(1)

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "tiny-llama"  # the probe's model name
    make_model().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.copy(probe_file("last")[0], tmp_path / "probe.safetensors")
    Path("train.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": e["prompt"]}],
                    "completion": [{"role": "assistant", "content": e["response"]}],
                }
            )
            + "\n"
            for e in examples
        )
    )
    machine = (
        "use_cpu=True, bf16=False, gradient_checkpointing=False, max_steps=2, per_device_train_batch_size=4, "
        "logging_steps=1, report_to=[], save_strategy='no', disable_tqdm=True, "
    )
    for script, name in ((snippet, "saferegx"), (plain, "trl")):
        script = script.replace(model_id, str(folder))
        script = re.sub(r"\b(SafeSFTConfig|SFTConfig)\(", lambda m: f"{m.group(1)}({machine}", script)
        script = script.replace("trainer.train()", "trainer.train()\nTRAINER = trainer")
        scope: dict = {}
        exec(compile(script, f"README.md ({name})", "exec"), scope)
        logs = [r for r in scope["TRAINER"].state.log_history if "loss" in r]
        assert logs and all(math.isfinite(r["loss"]) for r in logs)
        if name == "saferegx":
            assert type(scope["TRAINER"]).__name__ == "SafeSFTTrainer"
            assert {"ce", "kl", "risk", "beta"} <= set(logs[0])
