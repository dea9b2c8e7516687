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
cost is real (a random probe at layer 21, the demo's layer). The adaptive arms use the demo's
schedule (sequence mode, beta 0..0.9). The runs alternate (A B C, C B A, ...) so a shared
machine's drift hits all arms alike; step i of every run trains the same batch, so besides the
ratio of median step times the table gives the median of the per-step ratios (arm / plain, the
same step of the same repeat), which the batches' differing lengths do not blur. The pre-pass is
reported as a share of one epoch of plain SFT: (its seconds) / (steps per epoch x the median
plain step).

    .venv/bin/python benchmarks/step_cost.py [--steps 16] [--repeats 3] [--gate 0.05] [--write]
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
from saferegx.train import TrainConfig, train

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


def run_arm(arm: str, data: Path, probe: Path, out: Path, steps: int, batch: int, gate: float):
    """(per-step seconds, pre-pass seconds, steps per epoch, fraction gated out) of one run."""
    model, tokenizer = load_model()
    risk = {"plain": "none"}.get(arm, "probe")
    cfg = TrainConfig(
        data=[str(data)],
        output_dir=str(out),
        risk=risk,
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
    result = train(cfg, model=model, tokenizer=tokenizer)
    n = sum(1 for line in data.read_text().splitlines() if line.strip())
    gated = [r["gated_out"] for r in result.history if r.get("gated_out") is not None]
    return (
        [r["seconds"] for r in result.history],
        result.prepass_seconds,
        math.ceil(n / batch),
        statistics.mean(gated) if gated else float("nan"),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=16, help="optimizer steps per run (epoch 1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gate", type=float, default=0.05, help="kl_gate of the gated arm")
    ap.add_argument("--mixes", default=",".join(MIXES), help="comma-separated, from: " + ", ".join(MIXES))
    ap.add_argument("--write", action="store_true", help=f"append the result to {RESULTS}")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="saferegx-step-cost-"))
    model, _ = load_model()
    d, n_layers = model.config.hidden_size, len(decoder_layers(model))
    probe = tmp / "probe.safetensors"
    Probe(
        torch.randn(d) * 0.05,
        0.0,
        (21,),
        "last",
        model_name(model),
        d,
        n_layers,
        auroc=float("nan"),
        data="random (cost benchmark)",
    ).save(probe)
    del model

    arms = ("plain", "adaptive", "adaptive + gate")
    table = (
        "| mix | arm | median s/step | ratio of medians | median paired ratio | sequences gated out | "
        "pre-pass s | pre-pass / plain epoch |\n|---|---|---:|---:|---:|---:|---:|---:|\n"
    )
    summary = []
    for mix in [m.strip() for m in args.mixes.split(",")]:
        data = write_mix(tmp / f"{len(summary)}.jsonl", *MIXES[mix])
        runs = {a: [] for a in arms}  # per repeat, the step times: step i trains the same batch in every arm
        prepass = {a: [] for a in arms}
        gated = {a: [] for a in arms}
        for rep in range(args.repeats):
            for arm in arms if rep % 2 == 0 else arms[::-1]:
                s, pre, per_epoch, g = run_arm(
                    arm, data, probe, tmp / f"{arm}-{rep}-{len(summary)}", args.steps, args.batch, args.gate
                )
                runs[arm].append(s[1:])  # the first step warms up allocator and threads
                prepass[arm].append(pre)
                gated[arm].append(g)
                print(
                    f"{mix} repeat {rep} {arm}: {statistics.median(s[1:]):.2f} s/step, pre-pass {pre:.1f} s", flush=True
                )
        seconds = {a: [t for run in runs[a] for t in run] for a in arms}
        plain = statistics.median(seconds["plain"])
        for arm in arms:
            med = statistics.median(seconds[arm])
            pre = statistics.median(prepass[arm])
            g = statistics.mean(gated[arm])
            paired = statistics.median(a / b for run, base in zip(runs[arm], runs["plain"]) for a, b in zip(run, base))
            share = "-" if arm == "plain" else f"{100 * pre / (per_epoch * plain):.1f}%"
            table += (
                f"| {mix} | {arm} | {med:.2f} | {med / plain:.2f}x | {paired:.2f}x | "
                f"{'-' if math.isnan(g) else f'{100 * g:.0f}%'} | "
                f"{'-' if arm == 'plain' else f'{pre:.1f}'} | {share} |\n"
            )
        summary.append(
            (
                mix,
                statistics.median(seconds["adaptive + gate"]) / plain,
                statistics.median(seconds["adaptive"]) / plain,
                statistics.median(prepass["adaptive + gate"]) / (per_epoch * plain),
            )
        )
    table += (
        "\n"
        + "\n".join(
            f"- {mix}: adaptive + gate **{gated_ratio:.2f}x** plain (no gate {ungated:.2f}x); pre-pass "
            f"{100 * share:.1f}% of a plain epoch"
            for mix, gated_ratio, ungated, share in summary
        )
        + "\n"
    )
    print(table)
    if args.write:
        append_results(
            "Adaptive (pre-pass, gate) vs plain training step, epoch 1",
            "python benchmarks/step_cost.py " + shlex.join(sys.argv[1:]),
            machine(),
            f"SmolLM2-135M-Instruct, LoRA r=16 on all projections, batch {args.batch}, "
            f"max_length 256, {args.steps} steps per run (the first dropped as warmup), "
            f"reference cache off, default reference precision, kl_gate {args.gate}; "
            "per-step seconds from the trainer's metrics; model loading excluded.\n\n" + table,
        )


if __name__ == "__main__":
    main()
