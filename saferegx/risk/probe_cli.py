"""``saferegx probe fit | eval``: fit the activation probe on a model, and score it on prompt files.

Each command prints one JSON line on stdout (progress and warnings go to stderr), so that scripts
can read the result. User errors (a missing or malformed file, a probe fitted on another model)
end with a one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..usage import UsageError, load_model, load_probe, read_prompts


def add_parser(sub) -> None:
    """Register ``probe fit`` and ``probe eval`` under the top-level subparsers."""
    probe = sub.add_parser(
        "probe",
        help="fit or evaluate the activation probe",
        description="Fit the activation probe on a model, or score a saved one on prompt files.",
    )
    cmds = probe.add_subparsers(dest="probe_command", required=True)

    fit = cmds.add_parser(
        "fit",
        help="fit a probe on harmful vs benign prompts and save it",
        description="Fit on the train split, choose the layer by validation "
        "AUROC, report the held-out test split, save the probe.",
    )
    fit.add_argument("--model", default=None, help="HF causal LM folder (default: embedded SmolLM2-135M-Instruct)")
    fit.add_argument("--out", required=True, type=Path, help="probe file to write (.safetensors)")
    fit.add_argument(
        "--layer",
        default="auto",
        help="decoder layer to read (negative counts from the top), or 'auto': the best by validation AUROC "
        "among single layers and windows of 3 adjacent layers averaged (default)",
    )
    fit.add_argument(
        "--pool",
        choices=("auto", "last", "mean"),
        default="auto",
        help="last prompt token, mean over the prompt, or 'auto': both tried, the better by validation AUROC (default)",
    )
    fit.add_argument("--seed", type=int, default=0, help="split and subsample seed (default 0)")
    fit.add_argument(
        "--benign",
        type=Path,
        default=None,
        help='extra benign prompts (one per line, or .jsonl with "prompt"), e.g. from your '
        "fine-tuning data, split 60/20/20 like the rest: a probe that never saw "
        "your kind of benign instruction may score it as harmful",
    )
    fit.add_argument(
        "--max-prompts", type=int, default=None, help="stratified subsample of this many prompts, for quick runs"
    )

    ev = cmds.add_parser(
        "eval",
        help="score a saved probe on harmful and benign prompt files",
        description='Files: one prompt per line, or .jsonl with a "prompt" field.',
    )
    ev.add_argument("--probe", required=True, type=Path, help="probe file from 'probe fit'")
    ev.add_argument("--harmful", required=True, type=Path, help="harmful prompts (label 1)")
    ev.add_argument("--benign", required=True, type=Path, help="benign prompts (label 0)")
    ev.add_argument(
        "--model", default=None, help="the model the probe was fitted on (default: embedded SmolLM2-135M-Instruct)"
    )


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``probe`` command; 0 on success, 2 (message on stderr) on a user error."""
    try:
        result = (fit if args.probe_command == "fit" else evaluate)(args)
    except UsageError as e:
        print(f"saferegx probe {args.probe_command}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def fit(args: argparse.Namespace) -> dict:
    from safetensors import SafetensorError

    from .probe_fit import fit_default_probe

    if args.max_prompts is not None and args.max_prompts <= 0:
        raise UsageError(f"--max-prompts must be positive, got {args.max_prompts}")
    benign = read_prompts(args.benign) if args.benign is not None else []
    if args.out.is_dir():
        raise UsageError(f"--out {args.out}: is a folder; give the probe file's path")
    layer = None if args.layer == "auto" else _layer(args.layer)
    model, tokenizer = load_model(args.model)
    try:
        probe, report = fit_default_probe(
            model,
            tokenizer,
            layer=layer,
            pool=args.pool,
            seed=args.seed,
            max_prompts=args.max_prompts,
            benign=benign,
            benign_name=args.benign.name if args.benign else "",
            progress=True,
        )
    except ValueError as e:  # a split without both classes (raise --max-prompts), a bad --layer
        raise UsageError(str(e)) from None
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        probe.save(args.out)
    except (OSError, SafetensorError) as e:
        raise UsageError(f"--out {args.out}: cannot write ({getattr(e, 'strerror', None) or e})") from None
    return {**report, "out": str(args.out)}


def evaluate(args: argparse.Namespace) -> dict:
    from .metrics import accuracy, auroc, tpr_at_fpr

    harmful, benign = (read_prompts(p) for p in (args.harmful, args.benign))
    probe = load_probe(args.probe)  # before the model: a bad file fails fast
    model, tokenizer = load_model(args.model)
    try:
        probe.check(model)
    except ValueError as e:
        raise UsageError(f"{args.probe}: {e}") from None
    risk = probe.read(model, tokenizer, harmful + benign, progress=True)
    y = torch.tensor([1] * len(harmful) + [0] * len(benign))
    return {
        "auroc": auroc(risk, y),
        "accuracy": accuracy(risk, y),
        "tpr_at_fpr_5": tpr_at_fpr(risk, y, 0.05),
        "n_harmful": len(harmful),
        "n_benign": len(benign),
        "layers": list(probe.layers),
        "pool": probe.pool,
    }


def _layer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--layer must be an integer or 'auto', got {text!r}") from None
