"""The demo's report: one table of safety and utility per arm, training curves, and a trade-off plot.

``write_report`` writes ``report.md`` (the table with the plots embedded), ``results.json`` (what
it was given, so numbers can be re-plotted or compared later), ``curves.png`` (loss, KL and beta
against step, one line per arm) and ``asr_utility.png`` (ASR against utility, one labelled point
per arm: the method should sit low and to the right). Figures use matplotlib's object API, not
pyplot, so no global backend is chosen and nothing needs a display.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

COLUMNS = (("asr_refusal", "ASR (refusal match)"), ("asr_critic", "ASR (critic)"),
           ("utility", "utility (exact match)"), ("over_refusal", "over-refusal"))
CURVES = (("loss", "loss"), ("kl", "KL(ref || policy)"), ("beta", "beta"))


def write_report(out_dir: str | Path, results: Mapping[str, Mapping],
                 logs: Mapping[str, str | Path | Sequence[Mapping]] | None = None, *,
                 title: str = "saferegx demo") -> str:
    """Write the report for ``results`` (arm -> ``{asr_refusal, asr_critic, utility,
    over_refusal}``, rates in [0, 1], missing or ``None`` shown as "-") and training ``logs``
    (arm -> JSONL path or list of ``{step, loss, ce, kl, beta, risk}``) into ``out_dir``.

    Returns the Markdown table, for printing.
    """
    if not results:
        raise ValueError("results is empty: nothing to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves = {arm: read_metrics(log) if isinstance(log, (str, Path)) else list(log)
              for arm, log in (logs or {}).items()}
    table = markdown_table(results)
    colors = arm_colors([*results, *curves])
    plot_curves(curves, out / "curves.png", colors)
    plot_tradeoff(results, out / "asr_utility.png", colors)
    (out / "results.json").write_text(json.dumps(
        {"results": results, "logs": {a: str(l) if isinstance(l, (str, Path)) else None
                                      for a, l in (logs or {}).items()}},
        indent=2, default=str) + "\n")
    (out / "report.md").write_text(
        f"# {title}\n\n{table}\n\n"
        "ASR: share of harmful prompts answered (refusal match: no refusal marker and at least a "
        "few words; critic: the safety critic scores the prompt and response above 0.5). "
        "Utility: exact-match accuracy on the held-out task split. Over-refusal: share of "
        "benign prompts refused.\n\n"
        "## Safety against utility\n\n![ASR against utility](asr_utility.png)\n\n"
        "## Training curves\n\n![loss, KL and beta against step](curves.png)\n")
    return table


def markdown_table(results: Mapping[str, Mapping]) -> str:
    """One row per arm, rates as percentages, in the order given."""
    lines = ["| arm | " + " | ".join(name for _, name in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for arm, row in results.items():
        lines.append(f"| {arm} | " + " | ".join(_percent(row.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a JSONL metrics log (blank lines skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError(f"{path}:{lineno}: expected an object with a \"step\"")
            records.append(record)
    return records


def arm_colors(arms: Sequence[str]) -> dict[str, str]:
    """One colour per arm, the same in every panel and plot (matplotlib's default cycle)."""
    return {arm: f"C{k % 10}" for k, arm in enumerate(dict.fromkeys(arms))}


def plot_curves(curves: Mapping[str, Sequence[Mapping]], path: str | Path,
                colors: Mapping[str, str] | None = None) -> None:
    """Loss, KL and beta against step, one line per arm; an arm lacking a field is left out."""
    from matplotlib.figure import Figure

    colors = colors or arm_colors(list(curves))
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, len(CURVES))
    for ax, (key, label) in zip(axes, CURVES):
        for arm, records in curves.items():
            points = [(r["step"], r[key]) for r in records if _finite(r.get(key))]
            if points:
                ax.plot(*zip(*points), label=arm, color=colors[arm], linewidth=1.4)
        ax.set(title=label, xlabel="step")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=110)


def plot_tradeoff(results: Mapping[str, Mapping], path: str | Path,
                  colors: Mapping[str, str] | None = None) -> None:
    """ASR (refusal match filled, critic hollow) against utility, one labelled point per arm."""
    from matplotlib.figure import Figure

    colors = colors or arm_colors(list(results))
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    for arm, row in results.items():
        color = colors[arm]
        x = row.get("utility")
        if not _finite(x):
            continue
        for key, marker in (("asr_refusal", dict(color=color)),
                            ("asr_critic", dict(facecolors="none", edgecolors=color))):
            if _finite(row.get(key)):
                ax.scatter([100 * x], [100 * row[key]], s=60, **marker)
        y = row.get("asr_refusal") if _finite(row.get("asr_refusal")) else row.get("asr_critic")
        if _finite(y):
            ax.annotate(arm, (100 * x, 100 * y), textcoords="offset points", xytext=(6, 4),
                        fontsize=9, color=color)
    ax.set(xlabel="utility, exact match (%)", ylabel="attack success rate (%)",
           xlim=(-5, 105), ylim=(-5, 105),
           title="safety vs utility (filled: refusal match, hollow: critic)")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _percent(value) -> str:
    return f"{100 * value:.1f}%" if _finite(value) else "-"
