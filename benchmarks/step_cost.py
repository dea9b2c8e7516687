"""What risk-adaptive regularization costs per training step, against plain SFT, with the trainer.

The same LoRA fine-tune of the embedded SmolLM2-135M-Instruct (same data, seed and steps) runs as
``risk: none`` (plain SFT: policy forward, CE, backward) and ``risk: probe`` (plus the reference
forward with adapters disabled, the probe read and the KL term), alternated A B A B so drift of a
shared machine hits both alike. The probe is a random one of the right shape: its values do not
change the cost. Target (issue 4): an adaptive step <= 1.3x a plain one.

    .venv/bin/python benchmarks/step_cost.py [--steps 6] [--repeats 2] [--write]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from cpu_loss import RESULTS, append_results, machine  # noqa: E402
from saferegx.data import load_model, model_name  # noqa: E402
from saferegx.data.pairs import refusal_pairs  # noqa: E402
from saferegx.data.prompts import harmful_prompts  # noqa: E402
from saferegx.data.tasks import utility_task  # noqa: E402
from saferegx.risk.probe import Probe, decoder_layers  # noqa: E402
from saferegx.train import TrainConfig, train  # noqa: E402


def run_arm(risk: str, data: Path, probe: Path, out: Path, steps: int, batch: int) -> float:
    """Seconds per optimizer step of one short run (model loading excluded)."""
    model, tokenizer = load_model()
    cfg = TrainConfig(data=[str(data)], output_dir=str(out), risk=risk, probe=str(probe),
                      schedule_mode="sequence", max_steps=steps, batch_size=batch, max_length=256,
                      tensorboard=False, progress=False, seed=0)
    t0 = time.perf_counter()
    train(cfg, model=model, tokenizer=tokenizer)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--write", action="store_true", help=f"append the result to {RESULTS}")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="saferegx-step-cost-"))
    rows = utility_task("train", 48) + refusal_pairs(harmful_prompts(("harmbench",))[:48])
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n" for r in rows))
    model, _ = load_model()
    d, n_layers = model.config.hidden_size, len(decoder_layers(model))
    probe = tmp / "probe.safetensors"
    Probe(torch.randn(d) * 0.05, 0.0, (n_layers * 2 // 3,), "last", model_name(model), d, n_layers,
          auroc=float("nan"), data="random (cost benchmark)").save(probe)
    del model

    times: dict[str, list[float]] = {"none": [], "probe": []}
    for rep in range(args.repeats):
        for risk in ("none", "probe") if rep % 2 == 0 else ("probe", "none"):
            times[risk].append(run_arm(risk, data, probe, tmp / f"{risk}-{rep}", args.steps, args.batch))
            print(f"repeat {rep} {risk}: {times[risk][-1]:.2f} s/step", flush=True)
    plain, adaptive = statistics.median(times["none"]), statistics.median(times["probe"])
    table = ("| arm | median s/step | runs |\n|---|---:|---|\n"
             f"| plain SFT (risk: none) | {plain:.2f} | {', '.join(f'{t:.2f}' for t in times['none'])} |\n"
             f"| adaptive (risk: probe) | {adaptive:.2f} | {', '.join(f'{t:.2f}' for t in times['probe'])} |\n\n"
             f"- adaptive / plain: **{adaptive / plain:.2f}x** (target <= 1.3x)\n")
    print(table)
    if args.write:
        append_results("Adaptive vs plain training step", "python benchmarks/step_cost.py " + shlex.join(sys.argv[1:]),
                       machine(),
                       f"SmolLM2-135M-Instruct fp32, LoRA r=16 on all projections, batch {args.batch}, "
                       f"{args.steps} steps per run (utility-task and HarmBench-refusal pairs, max_length 256), "
                       "model loading excluded, runs alternated.\n\n" + table)

if __name__ == "__main__":
    main()
