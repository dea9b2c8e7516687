"""SafetyTrainer: the fused loss inside transformers.Trainer."""

import dataclasses
import math

import pytest
import torch
from transformers import TrainingArguments

from saferegx.risk.schedule import RiskSchedule
from saferegx.train.batches import Batch
from saferegx.train.hf import SafetyCollator, SafetyTrainer, policy_hidden

from conftest import composed_loss


def args(tmp_path, **kw):
    return TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=3,
        per_device_train_batch_size=3,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        **kw,
    )


def test_compute_loss_is_the_hand_composed_loss(tmp_path, tokenizer, lora_model, probe_file, examples):
    _, probe = probe_file("last")
    model = lora_model()
    collator = SafetyCollator(tokenizer, max_length=48)
    trainer = SafetyTrainer(
        model=model,
        args=args(tmp_path),
        train_dataset=examples,
        data_collator=collator,
        risk="probe",
        probe=probe,
        schedule=RiskSchedule(mode="sequence"),
        reference_precision="fp32",
    )
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
    trainer = SafetyTrainer(
        model=model,
        args=args(tmp_path),
        train_dataset=examples,
        data_collator=SafetyCollator(tokenizer, 48),
        risk="probe",
        probe=probe,
    )
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
        SafetyTrainer(
            model=make_model(),
            args=args(tmp_path),
            train_dataset=examples,
            data_collator=SafetyCollator(tokenizer),
            risk="fixed",
        )


def test_safety_trainer_refuses_an_unknown_reference_precision(tmp_path, tokenizer, lora_model, examples):
    with pytest.raises(ValueError, match="reference_precision must be one of auto, bf16, fp32, got 'half'"):
        SafetyTrainer(
            model=lora_model(),
            args=args(tmp_path),
            train_dataset=examples,
            data_collator=SafetyCollator(tokenizer),
            risk="fixed",
            reference_precision="half",
        )


def test_policy_hidden_is_the_final_hidden_state_without_every_layers(lora_model, tokenizer, examples):
    """The model runs whole (logits for one position), never with output_hidden_states, and the
    decoder's output is the last of what output_hidden_states would have kept."""
    model = lora_model()
    inputs = SafetyCollator(tokenizer, 48)(examples[:3])
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(dict(kw)), with_kwargs=True)
    try:
        hidden, head = policy_hidden(model, model, inputs["input_ids"], inputs["attention_mask"])
    finally:
        handle.remove()
    assert len(seen) == 1 and not seen[0].get("output_hidden_states") and seen[0]["logits_to_keep"] == 1
    assert hidden.requires_grad and head is model.get_base_model().lm_head.weight
    with torch.no_grad():
        expected = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_hidden_states=True
        ).hidden_states[-1]
    torch.testing.assert_close(hidden.detach(), expected, rtol=0, atol=0)


def test_policy_hidden_goes_through_ddp_so_its_gradient_hooks_fire(tmp_path, lora_model, tokenizer, examples):
    """Under DDP (gloo, one process) the backward of the loss on policy_hidden's rows all-reduces
    the gradient buckets; a call that bypassed DDP's forward (the decoder directly) would not."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from saferegx.lm import unwrap

    inputs = SafetyCollator(tokenizer, 48)(examples[:3])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = lora_model()
        ddp = DistributedDataParallel(model)
        reduced = []

        def count(_state, bucket):
            reduced.append(bucket.index())
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        ddp.register_comm_hook(None, count)
        for bypass in (False, True):
            reduced.clear()
            if bypass:
                hidden = (
                    unwrap(model)
                    .get_decoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
                    .last_hidden_state
                )
            else:
                hidden = policy_hidden(ddp, model, inputs["input_ids"], inputs["attention_mask"])[0]
            hidden[inputs["labels"] != -100].square().sum().backward()
            assert bool(reduced) != bypass, f"bypass={bypass}: buckets reduced {reduced}"
    finally:
        dist.destroy_process_group()
