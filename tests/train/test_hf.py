"""SafetyTrainer: the fused loss inside transformers.Trainer."""
import dataclasses
import math

import pytest
import torch
from transformers import TrainingArguments

from saferegx.risk.schedule import RiskSchedule
from saferegx.train.batches import Batch
from saferegx.train.hf import SafetyCollator, SafetyTrainer

from conftest import composed_loss


def args(tmp_path, **kw):
    return TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=3, per_device_train_batch_size=3,
                             gradient_accumulation_steps=2, learning_rate=1e-2, logging_steps=1,
                             save_strategy="no", report_to=[], use_cpu=True, seed=0,
                             dataloader_num_workers=0, **kw)


def test_compute_loss_is_the_hand_composed_loss(tmp_path, tokenizer, lora_model, probe_file, examples):
    _, probe = probe_file("last")
    model = lora_model()
    collator = SafetyCollator(tokenizer, max_length=48)
    trainer = SafetyTrainer(model=model, args=args(tmp_path), train_dataset=examples,
                            data_collator=collator, risk="probe", probe=probe,
                            schedule=RiskSchedule(mode="sequence"), reference_precision="fp32")
    inputs = collator(examples[2:5])
    expected, risk, beta = composed_loss(model, trainer_batch(inputs), probe, "sequence")
    with torch.no_grad():
        loss, out = trainer.compute_loss(model, inputs, return_outputs=True)
    assert loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)
    torch.testing.assert_close(out["beta"], beta)
    # with HF's global count of an accumulated batch, the sum is divided by it instead
    with torch.no_grad():
        half = trainer.compute_loss(model, inputs, num_items_in_batch=2 * int((inputs["labels"] != -100).sum()))
    assert half.item() == pytest.approx(expected.loss.item() / 2, rel=1e-5)


def trainer_batch(inputs):
    return Batch(**{f.name: inputs[f.name] for f in dataclasses.fields(Batch)})


def test_safety_trainer_trains_a_few_steps(tmp_path, tokenizer, lora_model, probe_file, examples):
    _, probe = probe_file("last")
    model = lora_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = SafetyTrainer(model=model, args=args(tmp_path), train_dataset=examples,
                            data_collator=SafetyCollator(tokenizer, 48), risk="probe", probe=probe)
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(x) and x > 0 for x in losses)
    assert trainer.state.global_step == 3
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    frozen = model.get_base_model().lm_head.weight
    assert not frozen.requires_grad


def test_safety_trainer_needs_a_reference(tmp_path, tokenizer, make_model, examples):
    with pytest.raises(ValueError, match="reference"):
        SafetyTrainer(model=make_model(), args=args(tmp_path), train_dataset=examples,
                      data_collator=SafetyCollator(tokenizer), risk="fixed")


def test_safety_trainer_refuses_an_unknown_reference_precision(tmp_path, tokenizer, lora_model, examples):
    with pytest.raises(ValueError, match="reference_precision must be one of auto, bf16, fp32, got 'half'"):
        SafetyTrainer(model=lora_model(), args=args(tmp_path), train_dataset=examples,
                      data_collator=SafetyCollator(tokenizer), risk="fixed", reference_precision="half")
