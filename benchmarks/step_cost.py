"""What risk-adaptive regularization costs per training step, against plain SFT, with the trainer.

The same LoRA fine-tune of the embedded SmolLM2-135M-Instruct (same data, seed and steps) runs as
``risk: none`` (plain SFT: policy forward, CE, backward) and ``risk: probe`` (plus the reference
forward with adapters disabled, the probe read and the KL term), alternated A B A B so drift of a
shared machine hits both alike. Each run is two epochs: in the second the reference cache
(saferegx/train/reference_cache.py) serves the reference's hidden states and risk, so the
reference forward is paid once per example. The adaptive run is timed twice: with the default
``reference_precision: auto`` (bf16 on a CPU with AVX512-BF16 or AMX) and with ``fp32``. The probe is a
random one of the right shape: its values do not change the cost. Target (issue 4): an adaptive step
<= 1.3x a plain one.

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


def run_arm(risk: str, precision: str, data: Path, probe: Path, out: Path, steps: int,
            batch: int) -> tuple[list[float], list[float]]:
    """Seconds of each optimizer step in epoch 1 and in epoch 2 of a two-epoch run of ``steps``
    steps per epoch (model loading excluded). In epoch 2 the reference cache serves the reference."""
    model, tokenizer = load_model()
    cfg = TrainConfig(data=[str(data)], output_dir=str(out), risk=risk, probe=str(probe),
                      schedule_mode="sequence", epochs=2, batch_size=batch, max_length=256,
                      reference_precision=precision,
                      tensorboard=False, progress=False, seed=0)
    history = train(cfg, model=model, tokenizer=tokenizer).history
    assert len(history) == 2 * steps
    seconds = [r["seconds"] for r in history]
    return seconds[:steps], seconds[steps:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per epoch")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--write", action="store_true", help=f"append the result to {RESULTS}")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="saferegx-step-cost-"))
    half = args.steps * args.batch // 2
    rows = utility_task("train", half) + refusal_pairs(harmful_prompts(("harmbench",))[:args.steps * args.batch - half])
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n" for r in rows))
    model, _ = load_model()
    d, n_layers = model.config.hidden_size, len(decoder_layers(model))
    probe = tmp / "probe.safetensors"
    Probe(torch.randn(d) * 0.05, 0.0, (n_layers * 2 // 3,), "last", model_name(model), d, n_layers,
          auroc=float("nan"), data="random (cost benchmark)").save(probe)
    del model

    runs = {"none": ("none", "auto"), "probe": ("probe", "auto"), "probe-fp32": ("probe", "fp32")}
    arms = {"plain SFT (risk: none)": [],
            "adaptive (risk: probe), epoch 1": [],
            "adaptive (risk: probe), epoch 2: reference cached": [],
            "adaptive, fp32 reference, epoch 1": [],
            "adaptive, fp32 reference, epoch 2: reference cached": []}
    names = list(arms)
    for rep in range(args.repeats):
        for name in list(runs) if rep % 2 == 0 else list(runs)[::-1]:
            first, second = run_arm(*runs[name], data, probe, tmp / f"{name}-{rep}", args.steps, args.batch)
            if name == "none":
                arms[names[0]] += first + second
            else:
                k = 1 if name == "probe" else 3
                arms[names[k]] += first
                arms[names[k + 1]] += second
            print(f"repeat {rep} {name}: epoch 1 {statistics.median(first):.2f} s/step, "
                  f"epoch 2 {statistics.median(second):.2f} s/step", flush=True)
    plain = statistics.median(arms[names[0]])
    table = "| arm | median s/step | ratio to plain | steps |\n|---|---:|---:|---:|\n"
    for name, seconds in arms.items():
        table += f"| {name} | {statistics.median(seconds):.2f} | {statistics.median(seconds) / plain:.2f}x | {len(seconds)} |\n"
    epoch1, epoch2, fp32_epoch1 = (statistics.median(arms[names[k]]) / plain for k in (1, 2, 3))
    table += (f"\n- adaptive / plain: **{epoch1:.2f}x** in epoch 1 (bf16 reference computed), **{epoch2:.2f}x** "
              f"from epoch 2 on (reference cached); over a 3-epoch run {(epoch1 + 2 * epoch2) / 3:.2f}x "
              f"(target <= 1.3x). With an fp32 reference pass, epoch 1 is {fp32_epoch1:.2f}x.\n")
    print(table)
    if args.write:
        append_results("Adaptive vs plain training step", "python benchmarks/step_cost.py " + shlex.join(sys.argv[1:]),
                       machine(),
                       f"SmolLM2-135M-Instruct fp32 policy, LoRA r=16 on all projections, batch {args.batch}, "
                       f"2 epochs of {args.steps} steps per run (utility-task and HarmBench-refusal pairs, "
                       "max_length 256), per-step seconds from the trainer's metrics (`seconds`), model "
                       "loading excluded, runs alternated.\n\n" + table)


if __name__ == "__main__":
    main()
