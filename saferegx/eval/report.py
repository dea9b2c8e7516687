"""The demo's report: safety and utility per arm with a 95% interval on every rate, training
curves, and a trade-off plot.

``write_report`` writes ``report.md`` (the table, ASR by AdvBench harm category, the plots),
``results.json`` (the counts it was given and every rate with its Wilson interval, so numbers can
be re-plotted or compared later), ``curves.png`` (loss, KL and beta against step, one line per
arm) and ``asr_utility.png`` (ASR against utility with interval bars, one labelled point per arm:
the method should sit low and to the right). Figures use matplotlib's object API, not pyplot, so no
global backend is chosen and nothing needs a display.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from .stats import wilson

# (column, heading, set, count): the rate is results[arm][set][count] / results[arm][set]["n"]
COLUMNS = (
    ("harmbench_judge", "HarmBench ASR (judge)", "harmbench", "judge"),
    ("harmbench_refusal", "HarmBench ASR (refusal match)", "harmbench", "refusal"),
    ("advbench_judge", "AdvBench ASR (judge)", "advbench", "judge"),
    ("advbench_refusal", "AdvBench ASR (refusal match)", "advbench", "refusal"),
    ("utility", "utility (exact match)", "utility", "correct"),
    ("over_refusal", "over-refusal", "benign", "refused"),
    ("over_refusal_lookalike", "over-refusal (look-alikes)", "lookalike", "refused"),
)
CURVES = (("loss", "loss"), ("kl", "KL(ref || policy)"), ("beta", "beta"))


def rates(results: Mapping[str, Mapping]) -> dict[str, dict[str, dict]]:
    """``{arm: {column: {"rate", "low", "high", "k", "n"}}}``, Wilson 95% intervals; a set an arm
    lacks is left out."""
    out = {}
    for arm, row in results.items():
        out[arm] = {}
        for column, _, name, count in COLUMNS:
            if isinstance(row.get(name), Mapping) and count in row[name]:
                k, n = int(row[name][count]), int(row[name]["n"])
                rate, low, high = wilson(k, n)
                out[arm][column] = {"rate": rate, "low": low, "high": high, "k": k, "n": n}
    return out


def write_report(
    out_dir: str | Path,
    results: Mapping[str, Mapping],
    logs: Mapping[str, str | Path | Sequence[Mapping]] | None = None,
    *,
    title: str = "saferegx demo",
    notes: str = "",
    extra: Mapping | None = None,
) -> str:
    """Write the report for ``results`` (arm -> ``{set: {"n", count...}}`` as from
    ``eval.heldout.evaluate``, plus an optional ``gated_out`` fraction) and training ``logs``
    (arm -> JSONL path or list of ``{step, loss, ce, kl, beta, risk}``) into ``out_dir``.
    ``notes`` (Markdown) goes under the table, ``extra`` into results.json.

    Returns the Markdown table and the notes, for printing.
    """
    if not results:
        raise ValueError("results is empty: nothing to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves = {
        arm: read_metrics(log) if isinstance(log, (str, Path)) else list(log) for arm, log in (logs or {}).items()
    }
    table = markdown_table(results)
    colors = arm_colors([*results, *curves])
    plot_curves(curves, out / "curves.png", colors)
    plot_tradeoff(results, out / "asr_utility.png", colors)
    (out / "results.json").write_text(
        json.dumps(
            {
                "results": results,
                "rates": rates(results),
                **(extra or {}),
                "logs": {a: str(log) if isinstance(log, (str, Path)) else None for a, log in (logs or {}).items()},
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    (out / "report.md").write_text(
        f"# {title}\n\n{table}\n\n{notes}\n\n"
        "Every rate is given with its Wilson 95% interval. ASR: share of harmful prompts whose "
        "response is a successful attack, by the response-reading judge and, beside it, by refusal "
        "match (no refusal marker and at least a few words). Utility: exact-match accuracy on the "
        "held-out task split. Over-refusal: share of benign prompts (ordinary, and look-alikes that "
        "share words or topics with harmful ones) refused. Gated out: share of training sequences "
        "whose beta fell below the KL gate (no reference work, beta 0).\n\n"
        f"{category_table(results)}\n\n"
        "## Safety against utility\n\n![ASR against utility](asr_utility.png)\n\n"
        "## Training curves\n\n![loss, KL and beta against step](curves.png)\n"
    )
    return table + (f"\n\n{notes}" if notes else "")


def markdown_table(results: Mapping[str, Mapping]) -> str:
    """One row per arm, each rate as a percentage with its interval, in the order given."""
    r = rates(results)
    lines = [
        "| arm | " + " | ".join(h for _, h, _, _ in COLUMNS) + " | gated out |",
        "|---|" + "---:|" * (len(COLUMNS) + 1),
    ]
    for arm, row in results.items():
        cells = [_cell(r[arm].get(column)) for column, _, _, _ in COLUMNS]
        gated = row.get("gated_out")
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {_percent(gated)} |")
    return "\n".join(lines)


def category_table(results: Mapping[str, Mapping]) -> str:
    """AdvBench ASR (judge) by harm category: one row per category, one column per arm."""
    arms = [a for a, row in results.items() if row.get("advbench", {}).get("by_category")]
    if not arms:
        return ""
    categories = list(results[arms[0]]["advbench"]["by_category"])
    lines = [
        "## AdvBench ASR (judge) by harm category",
        "",
        "| category | n | " + " | ".join(arms) + " |",
        "|---|---:|" + "---:|" * len(arms),
    ]
    for c in categories:
        cells = []
        for arm in arms:
            row = results[arm]["advbench"]["by_category"].get(c)
            cells.append(_cell(dict(zip(("rate", "low", "high"), wilson(row["judge"], row["n"])))) if row else "-")
        n = results[arms[0]]["advbench"]["by_category"][c]["n"]
        lines.append(f"| {c} | {n} | " + " | ".join(cells) + " |")
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
                raise ValueError(f'{path}:{lineno}: expected an object with a "step"')
            records.append(record)
    return records


def arm_colors(arms: Sequence[str]) -> dict[str, str]:
    """One colour per arm, the same in every panel and plot (matplotlib's default cycle)."""
    return {arm: f"C{k % 10}" for k, arm in enumerate(dict.fromkeys(arms))}


def plot_curves(
    curves: Mapping[str, Sequence[Mapping]], path: str | Path, colors: Mapping[str, str] | None = None
) -> None:
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


def plot_tradeoff(results: Mapping[str, Mapping], path: str | Path, colors: Mapping[str, str] | None = None) -> None:
    """ASR by the judge (AdvBench filled, HarmBench hollow) against utility, with the Wilson
    intervals as bars, one labelled point per arm."""
    from matplotlib.figure import Figure

    colors = colors or arm_colors(list(results))
    r = rates(results)
    fig = Figure(figsize=(6.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for arm in results:
        x = r[arm].get("utility")
        if x is None or not _finite(x["rate"]):
            continue
        label_at = None
        for column, filled in (("advbench_judge", True), ("harmbench_judge", False)):
            y = r[arm].get(column)
            if y is None or not _finite(y["rate"]):
                continue
            ax.errorbar(
                [100 * x["rate"]],
                [100 * y["rate"]],
                xerr=[[100 * (x["rate"] - x["low"])], [100 * (x["high"] - x["rate"])]],
                yerr=[[100 * (y["rate"] - y["low"])], [100 * (y["high"] - y["rate"])]],
                fmt="o",
                color=colors[arm],
                mfc=colors[arm] if filled else "none",
                ms=7,
                capsize=2,
                lw=0.8,
            )
            label_at = label_at or (100 * x["rate"], 100 * y["rate"])
        if label_at:
            ax.annotate(arm, label_at, textcoords="offset points", xytext=(6, 4), fontsize=9, color=colors[arm])
    ax.set(
        xlabel="utility, exact match (%)",
        ylabel="attack success rate by the judge (%)",
        xlim=(-5, 105),
        ylim=(-5, 105),
        title="safety vs utility (filled: AdvBench, hollow: HarmBench; 95% intervals)",
    )
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _percent(value) -> str:
    return f"{100 * value:.1f}%" if _finite(value) else "-"


def _cell(rate: Mapping | None) -> str:
    """``4.9% (1.3-16.1)``: the rate and its interval, in percent."""
    if rate is None or not _finite(rate["rate"]):
        return "-"
    return f"{100 * rate['rate']:.1f}% ({100 * rate['low']:.1f}-{100 * rate['high']:.1f})"
