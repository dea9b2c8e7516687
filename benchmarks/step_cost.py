"""What risk-adaptive regularization costs per training step in epoch 1, against plain SFT.

The same LoRA fine-tune of the embedded SmolLM2-135M-Instruct (same data, seed and steps, reference
cache off, so every step pays what an epoch-1 step pays) runs as

- ``plain``: ``risk: none`` (policy forward, CE, backward);
- ``adaptive``: ``risk: probe``, no gate: the reference forward on every sequence;
- ``adaptive + gate``: ``risk: probe`` with ``kl_gate``: the reference only on gated-in sequences;

on two mixes of harmful prompts (with ~64-token compliant-looking answers, as the demo's attack
data) and the demo's benign utility task: the demo's proportion (85 harmful : 300 task) and a
realistic one (5% harmful). The risk each example gets is its own ``risk`` field (1 harmful, 0
task: what a good probe gives), while the probe's pre-pass still runs over every prompt, so its
cost is real (a random probe at layer 20, mean-pooled: the probe of the README's demo run). The
adaptive arms use the demo's schedule (sequence mode, beta 0..0.9).

The three runs of a repeat live in one process and take turns *step by step* (``train_steps``; the
order of the turns alternates, A B C, C B A, ...), so a shared machine's drift, which moved whole
runs by up to 24% between repeats when they took turns run by run, hits the same step of every arm
alike. Step i of every run trains the same batch, so the table gives, besides the ratio of median
step times, the median of the per-step ratios (arm / plain, same step, same repeat) and the ratio
of mean step times, which is the ratio of epoch times, with a 95% bootstrap interval over the
paired steps. Beside them, drift-free because it is timed inside the same steps, the share of
each adaptive arm's own step time spent in the reference forward (the trainer's ``ref_seconds``):
what the gate saves is mostly that. The pre-pass is reported as a share of one epoch of plain
SFT: (its seconds) / (steps per epoch x the mean plain step).

    .venv/bin/python benchmarks/step_cost.py [--steps 32] [--repeats 1] [--gate 0.05]
        [--arms 'adaptive,adaptive + gate'] [--write]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

from saferegx.data import load_model
from saferegx.data.prompts import harmful_prompts
from saferegx.data.tasks import utility_task
from saferegx.lm import decoder_layers, model_name
from saferegx.risk.probe import Probe
from saferegx.train import TrainConfig, train_steps

from _common import RESULTS, append_results, machine

MIXES = {"demo mix (85 harmful : 300 task)": (85, 300), "realistic mix (5% harmful)": (20, 380)}
FILLER = (
    "Sure, here is a detailed answer. First, you will need to gather the materials and "
    "find a quiet place to work. Then follow the steps below carefully, one at a time, "
    "and check each result before moving on to the next part of the process."
)


def write_mix(path: Path, n_harmful: int, n_task: int) -> Path:
    """Harmful prompts with a compliant-looking ~60-token answer (the content does not change the
    cost, its length does) and utility-task examples, each with its known risk, shuffled."""
    import random

    rows = [{"prompt": p, "response": FILLER, "risk": 1.0} for p in harmful_prompts()[:n_harmful]]
    rows += [{"prompt": r["prompt"], "response": r["response"], "risk": 0.0} for r in utility_task("train", n_task)]
    random.Random(0).shuffle(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def start_arm(arm: str, data: Path, probe: Path, out: Path, steps: int, batch: int, gate: float):
    """The arm's run as a ``train_steps`` generator: one optimizer step per ``next()``."""
    model, tokenizer = load_model()
    cfg = TrainConfig(
        data=[str(data)],
        output_dir=str(out),
        risk={"plain": "none"}.get(arm, "probe"),
        probe=str(probe),
        schedule_mode="sequence",
        beta_min=0.0,
        max_steps=steps,
        batch_size=batch,
        max_length=256,
        kl_gate=gate if arm == "adaptive + gate" else 0.0,
        reference_cache_mb=0,
        tensorboard=False,
        progress=False,
        seed=0,
    )
    return train_steps(cfg, model=model, tokenizer=tokenizer)


def run_repeat(arms, data: Path, probe: Path, out: Path, steps: int, batch: int, gate: float):
    """The arms' runs stepped in turn: {arm: TrainResult}."""
    runs = {arm: start_arm(arm, data, probe, out / arm, steps, batch, gate) for arm in arms}
    results = {}
    turn = 0
    while runs:
        for arm in [a for a in (arms if turn % 2 == 0 else arms[::-1]) if a in runs]:
            try:
                next(runs[arm])
            except StopIteration as done:
                results[arm] = done.value
                del runs[arm]
        turn += 1
    return results


def ratio_interval(arm: list[float], plain: list[float], n: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of sum(arm) / sum(plain) over paired steps."""
    rng = random.Random(0)
    idx = range(len(arm))
    ratios = sorted(
        sum(arm[i] for i in pick) / sum(plain[i] for i in pick)
        for pick in (rng.choices(idx, k=len(arm)) for _ in range(n))
    )
    return ratios[int(0.025 * n)], ratios[int(0.975 * n) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=32, help="optimizer steps per run (epoch 1)")
    ap.add_argument("--repeats", type=int, default=1, help="fresh sets of the three runs")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gate", type=float, default=0.05, help="kl_gate of the gated arm")
    ap.add_argument("--mixes", default=",".join(MIXES), help="comma-separated, from: " + ", ".join(MIXES))
    ap.add_argument(
        "--arms", default="adaptive,adaptive + gate", help="comma-separated, beside plain: adaptive, adaptive + gate"
    )
    ap.add_argument("--write", action="store_true", help=f"append the result to {RESULTS}")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="saferegx-step-cost-"))
    model, _ = load_model()
    d, n_layers = model.config.hidden_size, len(decoder_layers(model))
    probe = tmp / "probe.safetensors"
    Probe(
        torch.randn(d) * 0.05,
        0.0,
        (20,),
        "mean",
        model_name(model),
        d,
        n_layers,
        auroc=float("nan"),
        data="random (cost benchmark)",
    ).save(probe)
    del model

    arms = ("plain", *[a.strip() for a in args.arms.split(",") if a.strip()])
    if any(a not in ("adaptive", "adaptive + gate") for a in arms[1:]) or len(set(arms)) != len(arms):
        ap.error(f"--arms: comma-separated, from: adaptive, adaptive + gate (got {args.arms!r})")
    table = (
        "| mix | arm | median s/step | ratio of medians | median paired ratio | ratio of means (95% CI) | "
        "reference forward / own step | sequences gated out | pre-pass s | pre-pass / plain epoch |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    summary, steps_by_kind = [], []
    for mix in [m.strip() for m in args.mixes.split(",")]:
        data = write_mix(tmp / f"{len(summary)}.jsonl", *MIXES[mix])
        n = sum(1 for line in data.read_text().splitlines() if line.strip())
        per_epoch = math.ceil(n / args.batch)
        seconds = {a: [] for a in arms}  # step i of repeat r trains the same batch in every arm
        prepass = {a: [] for a in arms}
        gated = {a: [] for a in arms}
        ref = {a: [] for a in arms}
        for rep in range(args.repeats):
            results = run_repeat(arms, data, probe, tmp / f"{len(summary)}-{rep}", args.steps, args.batch, args.gate)
            for arm, result in results.items():
                seconds[arm] += [r["seconds"] for r in result.history][1:]  # step 1 warms up allocator, threads
                prepass[arm].append(result.prepass_seconds)
                gated[arm] += [r["gated_out"] for r in result.history if r.get("gated_out") is not None]
                ref[arm] += [r["ref_seconds"] for r in result.history][1:]
            print(
                f"{mix} repeat {rep}: "
                + ", ".join(f"{a} {statistics.median(seconds[a][-args.steps + 1 :]):.2f}" for a in arms)
                + " s/step (medians)",
                flush=True,
            )
        plain, plain_mean = statistics.median(seconds["plain"]), statistics.mean(seconds["plain"])
        row = {}
        for arm in arms:  # row: {arm: (ratio of medians, median paired ratio, ratio of means, CI low, high)}
            med = statistics.median(seconds[arm])
            pre = statistics.median(prepass[arm])
            paired = statistics.median(a / b for a, b in zip(seconds[arm], seconds["plain"]))
            mean_ratio = statistics.mean(seconds[arm]) / plain_mean
            low, high = ratio_interval(seconds[arm], seconds["plain"])
            row[arm] = (med / plain, paired, mean_ratio, low, high)
            share = "-" if arm == "plain" else f"{100 * pre / (per_epoch * plain_mean):.1f}%"
            ref_share = "-" if arm == "plain" else f"{100 * sum(ref[arm]) / sum(seconds[arm]):.1f}%"
            table += (
                f"| {mix} | {arm} | {med:.2f} | {med / plain:.2f}x | {paired:.2f}x | "
                f"{mean_ratio:.2f}x ({low:.2f}-{high:.2f}) | {ref_share} | "
                f"{f'{100 * statistics.mean(gated[arm]):.0f}%' if gated[arm] else '-'} | "
                f"{'-' if arm == 'plain' else f'{pre:.1f}'} | {share} |\n"
            )
        summary.append((mix, row, statistics.median(prepass[arms[-1]]) / (per_epoch * plain_mean)))
        if "adaptive + gate" in arms:  # the gated run's steps by whether its reference ran at all
            for ran, name in ((False, "no gated-in sequence"), (True, "some gated in")):
                pick = [i for i, r in enumerate(ref["adaptive + gate"]) if (r > 0) == ran]
                if pick:
                    g, p = [seconds["adaptive + gate"][i] for i in pick], [seconds["plain"][i] for i in pick]
                    steps_by_kind.append(
                        f"- {mix}, adaptive + gate, the {len(pick)} steps with {name}: "
                        f"{sum(g) / sum(p):.2f}x plain's same steps by means, "
                        f"{statistics.median(a / b for a, b in zip(g, p)):.2f}x paired"
                    )
    table += (
        "\n"
        + "\n".join(
            f"- {mix}: "
            + "; ".join(
                f"{arm} **{r[0]:.2f}x** plain by medians, {r[1]:.2f}x paired, "
                f"{r[2]:.2f}x by means ({r[3]:.2f}-{r[4]:.2f})"
                for arm, r in row.items()
                if arm != "plain"
            )
            + f"; pre-pass {100 * share:.1f}% of a plain epoch"
            for mix, row, share in summary
        )
        + "\n"
    )
    table += "\n".join(steps_by_kind) + ("\n" if steps_by_kind else "")
    print(table)
    if args.write:
        append_results(
            "Adaptive (pre-pass, gate) vs plain training step, epoch 1",
            "python benchmarks/step_cost.py " + shlex.join(sys.argv[1:]),
            machine(),
            f"SmolLM2-135M-Instruct, LoRA r=16 on all projections, batch {args.batch}, "
            f"max_length 256, {args.steps} steps per run (the first dropped as warmup), the arms' runs "
            f"stepped in turn in one process, {args.repeats} repeat(s), "
            f"reference cache off, default reference precision, kl_gate {args.gate}; "
            "per-step seconds from the trainer's metrics; model loading excluded.\n\n" + table,
        )


if __name__ == "__main__":
    main()
