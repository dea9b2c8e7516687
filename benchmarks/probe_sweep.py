"""Per-layer sweep of the activation probe on the embedded model, and the critic on the same split.

Fits a probe per decoder layer (and on layer ranges averaged) on the shared train split, picks
by validation AUROC, reports held-out test figures; the embedded MiniLM critic is scored on the
same test prompts. Prints Markdown tables (pasted into docs/risk.md).

    .venv/bin/python benchmarks/probe_sweep.py [--limit N] [--max-length 128]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from saferegx.data import default_split, load_model
from saferegx.lm import model_name
from saferegx.risk import accuracy, auroc, default_critic, fit_probe, prompt_activations, tpr_at_fpr


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF folder; default: embedded SmolLM2-135M")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    texts, labels, (train, val, test) = default_split(args.seed)
    if args.limit:
        keep = lambda idx: idx[idx < args.limit]
        train, val, test = keep(train), keep(val), keep(test)
    print(f"prompts: {len(texts)} ({int(labels.sum())} harmful); train {len(train)}, val {len(val)}, test {len(test)}")

    model, tokenizer = load_model(args.model)
    n_layers = model.config.num_hidden_layers
    layers = list(range(n_layers))
    used = torch.cat([train, val, test]).sort().values
    t0 = time.perf_counter()
    acts = prompt_activations(
        model,
        tokenizer,
        [texts[i] for i in used],
        layers,
        ("last", "mean"),
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    print(f"activations: {len(used)} prompts x {n_layers} layers, {time.perf_counter() - t0:.0f} s")
    # re-index the splits into the rows of `acts`
    pos = torch.full((len(texts),), -1, dtype=torch.long)
    pos[used] = torch.arange(len(used))
    tr, va, te = pos[train], pos[val], pos[test]
    y = labels[used]

    thirds = [tuple(range(k * n_layers // 3, (k + 1) * n_layers // 3)) for k in range(3)]
    candidates = [(layer,) for layer in layers] + thirds + [tuple(layers)]
    results = {}
    for pool in ("last", "mean"):
        probe = fit_probe(
            acts[pool],
            y,
            layers,
            train_idx=tr,
            val_idx=va,
            pool=pool,
            model_name=model_name(model),
            num_layers=n_layers,
            candidates=candidates,
            data="default_split",
        )
        risk = probe.risk(acts[pool][list(probe.layers)].mean(0)[te])
        results[pool] = probe, risk

    print("\n| layer(s) | val AUROC, pool=last | val AUROC, pool=mean |")
    print("|---|---|---|")
    for k, cand in enumerate(candidates):
        name = str(cand[0]) if len(cand) == 1 else f"{cand[0]}-{cand[-1]} avg"
        row = [f"{results[p][0].sweep[k]['auroc']:.4f}" for p in ("last", "mean")]
        print(f"| {name} | {row[0]} | {row[1]} |")

    critic = default_critic(args.seed)
    t0 = time.perf_counter()
    c_risk = critic.score([texts[i] for i in test])
    c_time = time.perf_counter() - t0
    print("\nHeld-out test split (chosen by validation AUROC; calibrated on validation):\n")
    print("| signal | layer(s) | test AUROC | accuracy@0.5 | TPR@FPR5% |")
    print("|---|---|---|---|---|")
    yt = y[te]
    for pool, (probe, risk) in results.items():
        ls = probe.layers
        name = str(ls[0]) if len(ls) == 1 else f"{ls[0]}-{ls[-1]} avg"
        print(
            f"| probe, pool={pool} | {name} | {auroc(risk, yt):.4f} | "
            f"{accuracy(risk, yt):.4f} | {tpr_at_fpr(risk, yt):.4f} |"
        )
    yc = labels[test]
    print(
        f"| critic (MiniLM + logistic) | - | {auroc(c_risk, yc):.4f} | "
        f"{accuracy(c_risk, yc):.4f} | {tpr_at_fpr(c_risk, yc):.4f} |"
    )
    print(f"\ncritic scoring: {len(test)} prompts in {c_time:.1f} s")


if __name__ == "__main__":
    main()
