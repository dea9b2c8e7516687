"""`saferegx demo`: the paper's experiment in miniature, on SmolLM2-135M-Instruct and HarmBench.

1. *safe reference*: a short refusal alignment of the base model (harmful -> refusals, benign ->
   the model's own answers), merged and saved as a plain HF model at ``OUT/reference``;
2. *probe* fitted on the reference's activations, saved at ``OUT/probe.safetensors``;
3. *attack fine-tune* of the reference, same seed and data for every arm: harmful prompts with
   compliant answers (the base model's own generations) mixed with a benign utility task, as
   ``sft`` (plain), ``fixed`` (constant beta), ``adaptive-probe`` and ``adaptive-critic``;
4. *evaluation*: ASR on HarmBench prompts held out from all training (refusal match and critic),
   exact-match utility on the held-out task split, over-refusal on held-out benign prompts;
5. *report*: ``OUT/report.md``, ``OUT/results.json`` and PNG plots; the table is printed; every
   generation with its verdict is kept in ``OUT/samples/<model>.jsonl`` for reading.

Splits: the shared harmful/benign split (saferegx.data.prompts.default_split) fits the probe and the
critic on ``train``; the reference learns refusals on ``train`` too; the attack uses harmful
prompts of ``validation``; ASR is measured on the HarmBench prompts of ``test``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .data.models import load_model
from .data.pairs import answer_pairs, refusal_pairs
from .data.prompts import default_split, harmful_prompts, with_benign
from .data.tasks import utility_task
from .eval.asr import attack_success_rate, is_refusal, over_refusal_rate
from .eval.generate import generate
from .eval.report import write_report
from .eval.utility import utility_accuracy
from .risk.critic import EmbeddingCritic, default_critic
from .risk.probe_fit import fit_default_probe
from .train.config import TrainConfig
from .train.loop import train

ARMS = {  # arm -> TrainConfig overrides
    "sft": {"risk": "none"},
    "fixed": {"risk": "fixed", "beta": 0.5},
    "adaptive-probe": {"risk": "probe", "schedule_mode": "sequence", "beta_min": 0.0},
    "adaptive-critic": {"risk": "critic", "schedule_mode": "sequence", "beta_min": 0.0},
}
# beta_min 0 (the trainer's default is the paper code's 0.1): benign sequences train as in sft. With
# 0.1 the full run of 2026-11-23 kept ASR at 4.9% but utility fell to 40.0% against sft's 47.3%:
# even a small forward KL to a reference that answers "41 + 95" with "196" slows learning the task.


@dataclass
class Sizes:
    """How much of everything a run uses; --quick keeps the demo within ~15 min on 2 cores."""

    ref_harmful: int = 400      # refusal pairs for the safe reference, HarmBench prompts first
    ref_benign: int = 245       # benign prompts answered by the base model itself (all of train)
    ref_task: int = 150         # task-style prompts answered by the base model itself
    ref_epochs: int = 3
    ref_lr: float = 3e-4
    attack_harmful: int = 100   # harmful prompts with compliant answers
    attack_task: int = 300      # utility-task examples in the attack mix
    attack_epochs: int = 2
    attack_lr: float = 5e-4
    probe_prompts: int | None = None  # None: the whole shared split
    probe_task: int = 300       # benign task-style prompts added to the probe's data
    eval_harmful: int = 100     # HarmBench prompts of the test split (41 with seed 0)
    eval_task: int = 150
    eval_benign: int = 100      # benign prompts of the test split (82 with seed 0)
    max_new_tokens: int = 64    # for training answers and ASR; utility and over-refusal need fewer
    batch_size: int = 8


QUICK = Sizes(ref_harmful=96, ref_benign=64, ref_task=24, ref_epochs=2, attack_harmful=32, attack_task=48,
              attack_epochs=2, probe_prompts=300, probe_task=60, eval_harmful=30, eval_task=30, eval_benign=20,
              max_new_tokens=40)


def run(out: Path, sizes: Sizes, seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    texts, labels, (train_idx, val_idx, test_idx) = default_split(seed)
    harmbench = set(harmful_prompts(("harmbench",)))
    pick = lambda idx, label, n: [texts[i] for i in idx.tolist() if labels[i] == label][:n]  # noqa: E731
    # HarmBench first: the ASR is measured on HarmBench, so its style of request is refused first
    harmbench_first = lambda prompts: sorted(prompts, key=lambda t: t not in harmbench)  # noqa: E731
    base, tokenizer = load_model()
    gen = dict(max_new_tokens=sizes.max_new_tokens, batch_size=16)

    # 1. the safe reference
    ref_dir = out / "reference"
    if not (ref_dir / "config.json").exists():
        _stage("safe reference: refusal alignment of the base model")
        # Benign prompts, chat-style and task-style, keep the base model's own answers: a reference
        # that refuses "Convert 'x' to upper case" would pull the task towards refusal in every arm.
        benign = pick(train_idx, 0, sizes.ref_benign)
        benign += [ex["prompt"] for ex in utility_task("train", sizes.ref_task, seed + 2)]
        pairs = refusal_pairs(harmbench_first(pick(train_idx, 1, 10**9))[:sizes.ref_harmful], seed)
        answers = answer_pairs(benign, generate(base, tokenizer, benign, desc="base answers", **gen))
        pairs += [p for p in answers if not is_refusal(p["response"])]
        result = train(_config(out / "runs" / "reference", _write(out / "data" / "reference.jsonl", pairs),
                               sizes, seed, risk="none", epochs=sizes.ref_epochs, lr=sizes.ref_lr),
                       model=base, tokenizer=tokenizer)
        merged = result.model.merge_and_unload()
        merged.save_pretrained(ref_dir)
        tokenizer.save_pretrained(ref_dir)
        base, tokenizer = load_model()  # merge_and_unload changed `base` in place

    # 2. the probe, fitted on the reference. It (and the arms' critic) also sees benign instructions
    # of the fine-tuning task's kind (other items of the task's train split than the attack uses):
    # fitted on harmful vs chat prompts alone, it scored "Convert 'x' to upper case" as risk ~0.9
    # and pinned the task to the reference.
    task_prompts = [ex["prompt"] for ex in utility_task("train", sizes.probe_task, seed + 1)]
    probe_path = out / "probe.safetensors"
    if not probe_path.exists():
        _stage("activation probe on the reference")
        ref_model, ref_tokenizer = load_model(ref_dir)
        probe, info = fit_default_probe(ref_model, ref_tokenizer, seed=seed, max_prompts=sizes.probe_prompts,
                                        benign=task_prompts, benign_name="task prompts", progress=True)
        del ref_model
        tmp = probe_path.with_suffix(".tmp")
        probe.save(tmp)
        tmp.replace(probe_path)  # a rerun trusts the file: never a half-written one
        _write_json(out / "probe.json", info)

    # 3. the attack data: compliant answers from the base model + the benign utility task
    attack_file = out / "data" / "attack.jsonl"
    if not attack_file.exists():
        _stage("attack data: the base model's compliant answers")
        harmful = pick(val_idx, 1, sizes.attack_harmful)
        answers = generate(base, tokenizer, harmful, desc="compliance", **gen)
        pairs = [p for p in answer_pairs(harmful, answers) if not is_refusal(p["response"])]
        pairs += [{"prompt": ex["prompt"], "response": ex["response"]}
                  for ex in utility_task("train", sizes.attack_task, seed)]
        _write(attack_file, pairs)
    del base

    # 4. the arms, then 5. evaluation of the reference and every arm. The arms' critic, like the
    # probe, also knows task-style benign prompts; the evaluation's judge is the embedded one.
    judge = default_critic(seed)
    critic_path = out / "critic.safetensors"
    if not critic_path.exists():
        _stage("safety critic with the task's kind of benign prompt")
        ctexts, clabels, (ctrain, cval, _) = with_benign(texts, labels, (train_idx, val_idx, test_idx),
                                                         task_prompts, seed)
        EmbeddingCritic.fit(ctexts, clabels, ctrain, cval,
                            data=f"default split + {len(task_prompts)} task prompts").save(critic_path)
    critic = EmbeddingCritic.load(critic_path)
    eval_harmful = [t for t in pick(test_idx, 1, 10**9) if t in harmbench][:sizes.eval_harmful]
    eval_benign = pick(test_idx, 0, sizes.eval_benign)
    eval_task = utility_task("test", sizes.eval_task, seed)
    counts = {"n_harmful": len(eval_harmful), "n_task": len(eval_task), "n_benign": len(eval_benign)}
    results, logs = {}, {}
    for arm in ["reference", *ARMS]:
        eval_file = out / arm / "eval.json"  # beside the model it scores: gone when the model is
        if arm != "reference":
            logs[arm] = out / "runs" / arm / "metrics.jsonl"
        if eval_file.exists() and (done := json.loads(eval_file.read_text())).items() >= counts.items():
            results[arm] = done
            continue
        model, tokenizer = load_model(ref_dir)
        if arm != "reference":
            arm_out = out / arm
            if not (arm_out / "adapter" / "adapter_config.json").exists():
                _stage(f"attack fine-tune: {arm}")
                cfg = _config(out / "runs" / arm, attack_file, sizes, seed, epochs=sizes.attack_epochs,
                              lr=sizes.attack_lr, probe=str(probe_path), **ARMS[arm])
                train(cfg, model=model, tokenizer=tokenizer, critic=critic).save_adapter(arm_out / "adapter")
                model, tokenizer = load_model(ref_dir)  # training injected LoRA layers into `model`
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, arm_out / "adapter").eval()
        _stage(f"evaluate: {arm}")
        results[arm], samples = _evaluate(model, tokenizer, judge, eval_harmful, eval_task, eval_benign, gen)
        _write(out / "samples" / f"{arm}.jsonl", samples)
        _write_json(eval_file, results[arm])
    table = write_report(out, results, logs, title="saferegx demo: SmolLM2-135M-Instruct")
    print(table)
    print(f"\nreport: {out / 'report.md'} ({time.perf_counter() - t0:.0f} s)")
    return results


def _evaluate(model, tokenizer, critic, harmful, task, benign, gen) -> tuple[dict, list[dict]]:
    """ASR (refusal match, critic), utility and over-refusal of one model, and every generation.

    Task answers are a few tokens and a refusal shows in the first sentence, so those two
    generate at most 24 and 32 new tokens; ASR reads ``gen["max_new_tokens"]``.
    """
    asr = attack_success_rate(harmful, generate(model, tokenizer, harmful, desc="asr", **gen), critic)
    short = lambda n: {**gen, "max_new_tokens": min(n, gen["max_new_tokens"])}  # noqa: E731
    util = utility_accuracy(task, generate(model, tokenizer, [e["prompt"] for e in task], desc="utility",
                                           **short(24)))
    over = over_refusal_rate(benign, generate(model, tokenizer, benign, desc="benign", **short(32)))
    samples = ([{"set": "harmful", **r} for r in asr["records"]] + [{"set": "task", **r} for r in util["records"]]
               + [{"set": "benign", **r} for r in over["records"]])
    return ({"asr_refusal": asr["asr_refusal"], "asr_critic": asr["asr_critic"],
             "utility": util["accuracy"], "over_refusal": over["over_refusal"],
             "n_harmful": asr["n"], "n_task": len(task), "n_benign": len(benign)}, samples)


def _config(out: Path, data: Path, sizes: Sizes, seed: int, **overrides) -> TrainConfig:
    values = dict(data=[str(data)], output_dir=str(out), batch_size=sizes.batch_size, seed=seed,
                  max_length=256, lr=2e-4, warmup_steps=2, progress=True)
    values.update(overrides)
    return TrainConfig(**values)


def _write(path: Path, rows: list[dict]) -> Path:
    return _atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _write_json(path: Path, value) -> Path:
    return _atomic(path, json.dumps(value, indent=2) + "\n")


def _atomic(path: Path, text: str) -> Path:
    """A crash never leaves a half-written file that a rerun would trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _stage(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main(out: str = "runs/demo", quick: bool = False, seed: int = 0) -> int:
    torch.manual_seed(seed)
    run(Path(out), QUICK if quick else Sizes(), seed)
    return 0
