"""``saferegx audit``: the risk of every example of a dataset, before anyone fine-tunes on it.

Writes ``OUT/risk.jsonl`` (the table ``saferegx train`` reads with ``risk_table:``), ``OUT/risk.png``
(a histogram per source) and ``OUT/audit.md`` (counts above thresholds, the riskiest examples),
and prints a one-line JSON summary. User errors (a missing or malformed file, an empty dataset, a
probe fitted on another model) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .usage import UsageError, load_model, load_probe

THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)
TOP = 20


def add_parser(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="score every example of a dataset for risk, before training",
        description="The risk of every example (probe and/or critic, from its prompt "
        "alone), a histogram and a report of the riskiest.",
    )
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        type=Path,
        help='JSONL file(s) of {"prompt", "response"[, "risk"]}, as for saferegx train',
    )
    p.add_argument("--probe", type=Path, default=None, help="probe file from 'saferegx probe fit'")
    p.add_argument(
        "--critic",
        nargs="?",
        const="embedded",
        default=None,
        help="score with a Safety Critic: a critic file, or no value for the embedded one",
    )
    p.add_argument(
        "--model", default=None, help="the reference model the probe was fitted on (default: embedded SmolLM2)"
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--max-length",
        type=int,
        default=512,
        help="tokens per example, as the training config's max_length (default 512)",
    )
    p.add_argument(
        "--reference-precision",
        default="auto",
        help="auto | bf16 | fp32: of the probe's reference forward, as the training config's "
        "reference_precision: the same setting gives the same risks as training's own pre-pass "
        "(default auto: bf16 where the hardware has bf16 matmuls)",
    )
    p.add_argument("--beta-min", type=float, default=0.1)
    p.add_argument("--beta-max", type=float, default=0.9)


def run(args: argparse.Namespace) -> int:
    try:
        summary = audit(args)
    except UsageError as e:
        print(f"saferegx audit: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def audit(args: argparse.Namespace) -> dict:
    from .train.batches import load_examples
    from .train.config import REFERENCE_PRECISIONS
    from .train.model import reference_in_bf16

    if args.reference_precision not in REFERENCE_PRECISIONS:  # checked here: `--help` imports no trainer
        raise UsageError(f"--reference-precision must be one of {', '.join(REFERENCE_PRECISIONS)}")
    if args.probe is None and args.critic is None:
        raise UsageError("give --probe FILE and/or --critic [FILE]")
    if not 0 <= args.beta_min <= args.beta_max <= 1:
        raise UsageError(f"need 0 <= --beta-min <= --beta-max <= 1, got {args.beta_min}, {args.beta_max}")
    if args.max_length < 2:
        raise UsageError(f"--max-length must be >= 2, got {args.max_length}")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: is a file; give a folder")
    try:
        examples = load_examples(args.data)
    except ValueError as e:  # names the file (and line); an empty dataset too
        raise UsageError(str(e).replace("(config key 'data')", "(--data)")) from None
    probe = load_probe(args.probe) if args.probe is not None else None
    critic = _load_critic(args.critic) if args.critic is not None else None

    model = tokenizer = None
    if probe is not None:
        model, tokenizer = load_model(args.model)
        try:
            probe.check(model)
        except ValueError as e:
            raise UsageError(f"{args.probe}: {e}") from None
    bf16 = model is not None and reference_in_bf16(args.reference_precision, next(model.parameters()).device)
    risk = score_examples(
        examples, probe=probe, critic=critic, model=model, tokenizer=tokenizer, max_length=args.max_length, bf16=bf16
    )
    return write_audit(
        args.out,
        examples,
        risk,
        beta_min=args.beta_min,
        beta_max=args.beta_max,
        data=", ".join(str(p) for p in args.data),
    )


def score_examples(
    examples,
    *,
    probe=None,
    critic=None,
    model=None,
    tokenizer=None,
    max_length: int = 512,
    bf16: bool = False,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """``{source: [n] risk}`` of ``examples`` (a dataset from ``load_examples``): the probe on
    ``model`` (the reference; bf16 autocast with ``bf16``) over each prompt as training tokenizes
    it, and/or the critic."""
    from .risk.table import critic_risks
    from .train.batches import tokenize
    from .train.signals import RiskSource

    risk: dict[str, torch.Tensor] = {}
    if probe is not None:
        rows = tokenize(examples, tokenizer, max_length)
        ids = [r[:k] for r, k in zip(rows["input_ids"], rows["n_prompt"])]  # as training reads them
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        risk["probe"] = RiskSource("probe", probe=probe).score_prompts(
            model, examples["prompt"], ids, pad_id=pad_id, bf16=bf16, progress=progress
        )
    if critic is not None:
        risk["critic"] = critic_risks(critic, examples["prompt"], progress=progress)
    return risk


def write_audit(
    out: Path, examples, risk: dict[str, torch.Tensor], *, beta_min: float = 0.1, beta_max: float = 0.9, data: str = ""
) -> dict:
    """``out/risk.jsonl`` (the training table), ``out/risk.png``, ``out/audit.md``; the summary."""
    from .risk.table import RiskTable, prompt_hash

    table = RiskTable([prompt_hash(p) for p in examples["prompt"]], risk)
    main = "probe" if "probe" in risk else "critic"
    beta = beta_min + (beta_max - beta_min) * risk[main]
    out.mkdir(parents=True, exist_ok=True)
    table.save(out / "risk.jsonl", beta=beta)
    plot_histogram(risk, out / "risk.png")
    given = sum(r is not None for r in examples["risk"])
    (out / "audit.md").write_text(report(examples["prompt"], risk, main, given, data, beta_min, beta_max))
    return {
        "n": len(table),
        "out": str(out),
        "source": main,
        **{f"above_0.5_{s}": int((v > 0.5).sum()) for s, v in risk.items()},
        "mean_beta": float(beta.mean()),
    }


def report(
    prompts, risk: dict[str, torch.Tensor], main: str, given: int, data: str, beta_min: float, beta_max: float
) -> str:
    """The Markdown report: counts above thresholds per source, then the riskiest examples."""
    n = len(prompts)
    lines = [
        f"# Risk audit of {data or 'the data'}",
        "",
        f"{n} examples; risk from {' and '.join(risk)} (prompt only, before any training); "
        f"beta = {beta_min} + ({beta_max} - {beta_min}) * {main} risk.",
    ]
    if given:
        lines.append(f"{given} examples carry their own `risk`, which training uses instead.")
    lines += ["", "| risk above | " + " | ".join(risk) + " |", "|---|" + "---:|" * len(risk)]
    for t in THRESHOLDS:
        cells = [f"{int((v > t).sum())} ({100 * float((v > t).float().mean()):.1f}%)" for v in risk.values()]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## The {min(TOP, n)} riskiest by {main}",
        "",
        "![risk histogram](risk.png)",
        "",
        "| index | " + " | ".join(risk) + " | prompt |",
        "|---:|" + "---:|" * len(risk) + "---|",
    ]
    for i in risk[main].argsort(descending=True)[:TOP].tolist():
        text = " ".join(prompts[i].split())
        text = (text[:117] + "...") if len(text) > 120 else text
        lines.append(
            f"| {i} | "
            + " | ".join(f"{float(v[i]):.3f}" for v in risk.values())
            + " | "
            + text.replace("|", "\\|")
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot_histogram(risk: dict[str, torch.Tensor], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5 * len(risk), 3.4), layout="constrained")
    for k, (source, values) in enumerate(risk.items()):
        ax = fig.add_subplot(1, len(risk), k + 1)
        ax.hist(values.numpy(), bins=20, range=(0, 1), color=f"C{k}")
        ax.axvline(0.5, color="k", lw=0.8, ls="--")
        ax.set_xlabel(f"{source} risk")
        ax.set_ylabel("examples")
        ax.set_yscale("log")
        ax.set_title(f"{source}: {int((values > 0.5).sum())} of {len(values)} above 0.5")
    fig.savefig(path, dpi=110)


def _load_critic(spec: str):
    from safetensors import SafetensorError

    from .risk.critic import EmbeddingCritic, default_critic

    if spec == "embedded":
        return default_critic()
    if not Path(spec).is_file():
        raise UsageError(f"--critic {spec}: no such file")
    try:
        return EmbeddingCritic.load(spec)
    except (ValueError, SafetensorError, OSError, KeyError, TypeError) as e:
        raise UsageError(f"--critic {spec}: not a saferegx critic ({e})") from None
