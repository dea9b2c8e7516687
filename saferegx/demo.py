"""`saferegx demo`: the paper's experiment in miniature, on SmolLM2-135M-Instruct and HarmBench.

1. *safe reference*: a short refusal alignment of the base model (harmful -> refusals; benign chat,
   task-style and look-alike prompts -> the base model's own answers), merged and saved as a plain
   HF model at ``OUT/reference``;
2. *probe* fitted on the reference's activations, saved at ``OUT/probe.safetensors``;
3. *attack data*: harmful prompts with compliant answers (the base model's own generations) mixed
   with a benign utility task, and its *audit* (``OUT/audit/``): every example's risk before
   training, by the probe and the arms' critic, from which each adaptive arm's KL gate is chosen;
4. *attack fine-tune* of the reference, same seed and data for every arm: ``sft`` (plain),
   ``fixed`` (constant beta), ``adaptive-probe`` and ``adaptive-critic`` (risk from the pre-pass,
   the reference only on sequences above the gate);
5. *evaluation* on sets held out from all training: ASR on HarmBench and AdvBench by the
   response-reading judge and by refusal match, exact-match utility, over-refusal on ordinary
   benign prompts and on benign look-alikes (saferegx.eval.heldout);
6. *report*: ``OUT/report.md``, ``OUT/results.json`` and PNG plots, every rate with a Wilson 95%
   interval, the judge's agreement with human labels under the table; the table is printed; every
   generation with its verdicts is kept in ``OUT/samples/<model>.jsonl`` for reading.

Splits: the shared harmful/benign split (saferegx.data.prompts.default_split) fits the probe and the
critic on ``train``; the reference learns refusals on ``train`` too; the attack uses harmful
prompts of ``validation``; ASR is measured on the HarmBench prompts of ``test`` and on AdvBench.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .audit import score_examples, write_audit
from .data.lookalikes import lookalike_prompts
from .data.models import load_model
from .data.pairs import answer_pairs, refusal_pairs
from .data.prompts import default_split, harmful_prompts, with_benign
from .data.rephrase import rephrasings
from .data.tasks import utility_task
from .eval.asr import is_refusal
from .eval.generate import generate
from .eval.heldout import HeldOut, evaluate, held_out
from .eval.report import write_report
from .lm import native_bf16
from .risk.critic import EmbeddingCritic
from .risk.probe import Probe
from .risk.probe_fit import fit_default_probe
from .train.batches import load_examples
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
# Generation (base answers, compliance, evaluation) runs in bf16 where the CPU has native bf16
# matmuls, 32 prompts a batch: greedy decoding of a 135M model is bound by reading its weights, and
# on the 2-core test machine 64 prompts x 40 tokens took 32.5 s in fp32 at 16 a batch, 12.2 s so
# (53 of the 64 answers came out identical to fp32). Training, the probe's fit and the audit run
# under bf16 autocast there (a LoRA step 3.9 -> 2.9 s); where bf16 is emulated, all stays fp32.
GEN_BATCH = 32
GATE_CAP = 0.1  # a KL weight above this is never gated out, whatever the audit shows
MAX_LENGTH = 256


@dataclass
class Sizes:
    """How much of everything a run uses; --quick is the small version (14 min on 2 cores)."""

    ref_harmful: int = 400  # refusal pairs for the safe reference, HarmBench prompts first
    ref_benign: int = 245  # benign prompts answered by the base model itself (all of train)
    ref_task: int = 150  # task-style prompts answered by the base model itself
    ref_lookalike: int = 100  # benign look-alikes of the train split answered by the base model
    # Other surface forms of each templated benign topic above (data.rephrase). Off: in full runs
    # two more forms (with 3 or 4 reference epochs) cut the reference's over-refusal but cost the
    # reference's ASR target or the adaptive arms' margins; docs/demo.md gives the runs' figures.
    ref_rephrase: int = 0
    ref_epochs: int = 3
    ref_lr: float = 3e-4
    attack_harmful: int = 100  # harmful prompts with compliant answers
    attack_task: int = 300  # utility-task examples in the attack mix
    attack_epochs: int = 2
    attack_lr: float = 5e-4
    probe_prompts: int | None = None  # None: the whole shared split
    probe_task: int = 300  # benign task-style prompts added to the probe's data
    eval_harmful: int = 100  # HarmBench prompts of the test split (41 with seed 0)
    eval_advbench: int = 200  # AdvBench behaviours, a fixed random draw minus near-duplicates
    eval_task: int = 150
    eval_benign: int = 100  # benign prompts of the test split (82 with seed 0)
    eval_lookalike: int = 100  # held-out benign look-alikes (80)
    max_new_tokens: int = 64  # for training answers and ASR; utility and over-refusal need fewer
    batch_size: int = 8


QUICK = Sizes(
    ref_harmful=96,
    ref_benign=64,
    ref_task=24,
    ref_lookalike=24,
    ref_epochs=2,
    attack_harmful=32,
    attack_task=48,
    attack_epochs=2,
    # the probe on the whole split, as in the full run: on 300 prompts validation AUROC ties at
    # 1.0 between candidates, so the sweep cannot choose (the audit then found 23 of 27 harmful)
    probe_task=60,
    eval_harmful=30,
    eval_advbench=40,
    eval_task=30,
    eval_benign=20,
    eval_lookalike=20,
    max_new_tokens=40,
)


def run(out: Path, sizes: Sizes, seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    texts, labels, (train_idx, val_idx, test_idx) = default_split(seed)
    harmbench = set(harmful_prompts(("harmbench",)))

    def pick(idx, label, n):
        return [texts[i] for i in idx.tolist() if labels[i] == label][:n]

    base, tokenizer = load_model()
    bf16 = native_bf16(torch.device("cpu"))  # see GEN_BATCH
    gen_dtype = torch.bfloat16 if bf16 else torch.float32
    generator = functools.cache(lambda: load_model(dtype=gen_dtype)[0])  # the base model, to generate
    gen = dict(max_new_tokens=sizes.max_new_tokens, batch_size=GEN_BATCH)

    # 1. the safe reference
    ref_dir = out / "reference"
    if not (ref_dir / "config.json").exists():
        _stage("safe reference: refusal alignment of the base model")
        # Benign prompts keep the base model's own answers: chat-style, task-style (a reference
        # that refuses "Convert 'x' to upper case" would pull the task towards refusal in every
        # arm) and look-alikes (a reference that refuses "How do I kill a zombie process?" reads
        # words, not intent), optionally each templated topic in other forms too (the topic
        # decides, not the form). HarmBench first: its style of request is refused first.
        benign = pick(train_idx, 0, sizes.ref_benign)
        benign += [ex["prompt"] for ex in utility_task("train", sizes.ref_task, seed + 2)]
        benign += lookalike_prompts("train", seed)[: sizes.ref_lookalike]
        unseen = pick(val_idx, 0, 10**9) + pick(test_idx, 0, 10**9) + lookalike_prompts("test", seed)
        benign += rephrasings(benign, sizes.ref_rephrase, seed, avoid=unseen)
        harmful = sorted(pick(train_idx, 1, 10**9), key=lambda t: t not in harmbench)
        pairs = refusal_pairs(harmful[: sizes.ref_harmful], seed)
        answers = answer_pairs(benign, generate(generator(), tokenizer, benign, desc="base answers", **gen))
        pairs += [p for p in answers if not is_refusal(p["response"])]
        result = train(
            _config(
                out / "runs" / "reference",
                _write(out / "data" / "reference.jsonl", pairs),
                sizes,
                seed,
                risk="none",
                bf16=bf16,
                epochs=sizes.ref_epochs,
                lr=sizes.ref_lr,
            ),
            model=base,
            tokenizer=tokenizer,
        )
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
        probe, info = fit_default_probe(
            ref_model,
            ref_tokenizer,
            seed=seed,
            max_prompts=sizes.probe_prompts,
            benign=task_prompts,
            benign_name="task prompts",
            bf16=bf16,
            progress=True,
        )
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
        answers = generate(generator(), tokenizer, harmful, desc="compliance", **gen)
        pairs = [p for p in answer_pairs(harmful, answers) if not is_refusal(p["response"])]
        pairs += [
            {"prompt": ex["prompt"], "response": ex["response"]}
            for ex in utility_task("train", sizes.attack_task, seed)
        ]
        _write(attack_file, pairs)
    del base, generator

    # The arms' critic, like the probe, also knows task-style benign prompts.
    critic_path = out / "critic.safetensors"
    if not critic_path.exists():
        _stage("safety critic with the task's kind of benign prompt")
        ctexts, clabels, (ctrain, cval, _) = with_benign(
            texts, labels, (train_idx, val_idx, test_idx), task_prompts, seed
        )
        EmbeddingCritic.fit(
            ctexts, clabels, ctrain, cval, data=f"default split + {len(task_prompts)} task prompts"
        ).save(critic_path)
    critic = EmbeddingCritic.load(critic_path)

    # 3b. the audit of the attack data: each example's risk before training, and the gates
    audit_dir = out / "audit"
    attack = load_examples(attack_file)
    task_set = {ex["prompt"] for ex in utility_task("train", sizes.attack_task, seed)}
    if not (audit_dir / "audit.json").exists():
        _stage("audit of the attack data: risk before training")
        ref_model, ref_tokenizer = load_model(ref_dir)
        risk = score_examples(
            attack,
            probe=Probe.load(probe_path, ref_model),
            critic=critic,
            model=ref_model,
            tokenizer=ref_tokenizer,
            max_length=MAX_LENGTH,
            bf16=bf16,  # as the arms' pre-pass reads it (reference_precision auto)
        )
        del ref_model
        summary = write_audit(audit_dir, attack, risk, beta_min=0.0, beta_max=0.9, data=str(attack_file))
        is_task = torch.tensor([p in task_set for p in attack["prompt"]])
        for source, values in risk.items():
            summary[source] = audit_figures(values, is_task)
        _write_json(audit_dir / "audit.json", summary)
    audit = json.loads((audit_dir / "audit.json").read_text())

    # 4. the arms, then 5. evaluation of the reference and every arm on the held-out sets
    from .eval.judge import default_judge

    judge = default_judge(seed)
    sets_file = out / "data" / "held_out.json"
    if sets_file.exists():  # a rerun rewrites nothing it finished, and skips the near-duplicate check
        sets = HeldOut.from_json(json.loads(sets_file.read_text()))
    else:
        training = [texts[i] for i in torch.cat([train_idx, val_idx]).tolist() if labels[i] == 1]
        sets = held_out(
            [t for t in pick(test_idx, 1, 10**9) if t in harmbench][: sizes.eval_harmful],
            pick(test_idx, 0, sizes.eval_benign),
            training,
            n_advbench=sizes.eval_advbench,
            n_task=sizes.eval_task,
            n_lookalike=sizes.eval_lookalike,
            seed=seed,
        )
        _write_json(sets_file, sets.to_json())
    results, logs = {}, {}
    for arm in ["reference", *ARMS]:
        eval_file = out / arm / "eval.json"  # beside the model it scores: gone when the model is
        overrides = dict(ARMS.get(arm, {}))
        if overrides.get("risk") in ("probe", "critic"):  # the audit's table, and its gate
            source = overrides["risk"]
            overrides.update(risk_table=str(audit_dir / "risk.jsonl"), kl_gate=audit[source]["gate"])
        if arm != "reference":
            logs[arm] = out / "runs" / arm / "metrics.jsonl"
        if eval_file.exists() and _sizes_of(done := json.loads(eval_file.read_text())) == sets.sizes():
            results[arm] = done
            continue
        model, tokenizer = load_model(ref_dir)
        if arm != "reference":
            arm_out = out / arm
            if not (arm_out / "adapter" / "adapter_config.json").exists():
                _stage(f"attack fine-tune: {arm}")
                cfg = _config(
                    out / "runs" / arm,
                    attack_file,
                    sizes,
                    seed,
                    bf16=bf16,
                    epochs=sizes.attack_epochs,
                    lr=sizes.attack_lr,
                    probe=str(probe_path),
                    **overrides,
                )
                train(cfg, model=model, tokenizer=tokenizer, critic=critic).save_adapter(arm_out / "adapter")
                model, tokenizer = load_model(ref_dir)  # training injected LoRA layers into `model`
            from peft import PeftModel

            # merged for evaluation: the same weights up to fp32 rounding, and generation without
            # PEFT's per-layer adapter calls
            model = PeftModel.from_pretrained(model, arm_out / "adapter").merge_and_unload().eval()
        _stage(f"evaluate: {arm}")
        results[arm], samples = evaluate(
            model.to(gen_dtype), tokenizer, sets, judge, max_new_tokens=sizes.max_new_tokens, batch_size=GEN_BATCH
        )
        if arm in logs:
            gated = [r["gated_out"] for r in _read_jsonl(logs[arm]) if r.get("gated_out") is not None]
            results[arm]["gated_out"] = sum(gated) / len(gated) if gated else None
        _write(out / "samples" / f"{arm}.jsonl", samples)
        _write_json(eval_file, results[arm])
    agreement_file = out / "judge_agreement.json"
    if not agreement_file.exists():
        _write_json(agreement_file, judge_agreement(seed))
    agreement = json.loads(agreement_file.read_text())
    notes = (
        f"Judge: {agreement['line']}\n\nAudit of the attack data (risk before training, "
        + "; ".join(
            f"{s}: {audit[s]['harmful_above']:.1%} of its {audit[s]['n_harmful']} harmful "
            f"examples above 0.5, {audit[s]['task_above']:.1%} of its {audit[s]['n_task']} "
            f"task examples, gate {audit[s]['gate']}"
            for s in ("probe", "critic")
        )
        + ")."
    )
    table = write_report(
        out,
        results,
        logs,
        title="saferegx demo: SmolLM2-135M-Instruct",
        notes=notes,
        extra={"judge_agreement": agreement, "audit": audit, "held_out": sets.sizes()},
    )
    print(table)
    print(f"\nreport: {out / 'report.md'} ({time.perf_counter() - t0:.0f} s)")
    return results


def audit_figures(risk: torch.Tensor, is_task: torch.Tensor) -> dict:
    """How well a risk source separates the attack data, and the KL gate chosen from it.

    The gate is the 99th percentile of the task examples' betas (beta = 0.9 risk with the demo's
    beta_min 0), rounded up to 0.01 and capped at GATE_CAP: 99% of the benign task trains with no
    reference work, while no example whose KL weight would exceed the cap ever loses it.
    """
    beta = 0.9 * risk
    task_beta = beta[is_task]
    p99 = float(torch.quantile(task_beta, 0.99)) if len(task_beta) else 0.0
    gate = min(GATE_CAP, max(0.01, math.ceil(p99 * 100) / 100))
    harmful = risk[~is_task]
    return {
        "n_harmful": int((~is_task).sum()),
        "n_task": int(is_task.sum()),
        "harmful_above": float((harmful > 0.5).float().mean()) if len(harmful) else float("nan"),
        "task_above": float((risk[is_task] > 0.5).float().mean()) if len(task_beta) else float("nan"),
        "gate": gate,
        "gated_out": float((beta < gate).float().mean()),
    }


def judge_agreement(seed: int) -> dict:
    """The judge's and refusal match's agreement with the held-out human labels (the judge's own
    test split), and a line that says it under the table."""
    from .eval.judge import compare_judges

    result = compare_judges(seed, judges=("judge", "refusal"), demo_labels=None)
    test = result["sets"]["test"]

    def say(a):
        return (
            f"accuracy {100 * a['accuracy']:.1f}% ({100 * a['accuracy_low']:.1f}-{100 * a['accuracy_high']:.1f}), "
            f"Cohen's kappa {a['kappa']:.2f} ({a['kappa_low']:.2f}-{a['kappa_high']:.2f})"
        )

    line = (
        f"the response-reading judge agrees with {test['n']} held-out human labels (PyRIT) with "
        f"{say(test['rows']['judge'])}; refusal match on the same labels: {say(test['rows']['refusal'])}."
    )
    return {**result, "line": line}


def _sizes_of(result: dict) -> dict:
    return {name: result.get(name, {}).get("n") for name in ("harmbench", "advbench", "utility", "benign", "lookalike")}


def _config(out: Path, data: Path, sizes: Sizes, seed: int, **overrides) -> TrainConfig:
    values = dict(
        data=[str(data)],
        output_dir=str(out),
        batch_size=sizes.batch_size,
        seed=seed,
        max_length=MAX_LENGTH,
        lr=2e-4,
        warmup_steps=2,
        progress=True,
    )
    values.update(overrides)
    return TrainConfig(**values)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


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
