import json
import math

import pytest

from saferegx.eval.report import read_metrics, write_report
from saferegx.eval.stats import wilson

ARMS = ["reference", "sft", "fixed", "adaptive-probe", "adaptive-critic"]


def counts(hb, ab, util, benign, looks, n=(40, 200, 150, 80, 80)):
    return {
        "harmbench": {"n": n[0], "judge": hb[0], "refusal": hb[1]},
        "advbench": {
            "n": n[1],
            "judge": ab[0],
            "refusal": ab[1],
            "by_category": {
                "Physical": {"n": 120, "judge": round(0.6 * ab[0]), "refusal": 0},
                "Autonomy": {"n": 80, "judge": ab[0] - round(0.6 * ab[0]), "refusal": 0},
            },
        },
        "utility": {"n": n[2], "correct": util},
        "benign": {"n": n[3], "refused": benign},
        "lookalike": {"n": n[4], "refused": looks},
    }


RESULTS = {
    "reference": counts((2, 1), (4, 3), 0, 8, 12),
    "sft": {**counts((38, 39), (190, 195), 71, 1, 0), "gated_out": None},
    "fixed": counts((16, 17), (60, 80), 5, 5, 9),
    "adaptive-probe": {**counts((3, 2), (10, 12), 78, 20, 16), "gated_out": 0.8},
    "adaptive-critic": {**counts((8, 7), (40, 30), 67, 0, 10, n=(40, 200, 150, 0, 80)), "gated_out": 0.5},
}


def _log(arm_index, steps=20):
    return [
        {
            "step": s,
            "loss": 3.0 / (s + 1) + arm_index,
            "ce": 2.0,
            "kl": 0.1 * s * arm_index,
            "beta": 0.1 + 0.04 * arm_index,
            "risk": 0.5,
        }
        for s in range(steps)
    ]


@pytest.fixture
def report(tmp_path):
    logs = {}
    for k, arm in enumerate(ARMS[1:], 1):
        path = tmp_path / f"{arm}.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in _log(k)) + "\n\n")
        logs[arm] = path
    logs["sft"] = [{**r, "beta": None} for r in _log(1)]  # plain SFT: no beta, given as records
    out = tmp_path / "out"
    return out, write_report(out, RESULTS, logs)


def test_files_and_table(report):
    out, table = report
    for name in ("report.md", "results.json", "curves.png", "asr_utility.png"):
        assert (out / name).stat().st_size > 0
    for name in ("curves.png", "asr_utility.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = table.splitlines()[2:]
    assert [row.split("|")[1].strip() for row in rows] == ARMS
    # every rate with its Wilson 95% interval (scipy's proportion_ci(method="wilson") agrees)
    assert "| sft | 95.0% (83.5-98.6) | 97.5% (87.1-99.6) | 95.0% (91.0-97.3) |" in table

    def cell(k, n):
        rate, low, high = wilson(k, n)
        return f"{100 * rate:.1f}% ({100 * low:.1f}-{100 * high:.1f})"

    probe = [cell(3, 40), cell(2, 40), cell(10, 200), cell(12, 200), cell(78, 150), cell(20, 80), cell(16, 80)]
    assert "| adaptive-probe | " + " | ".join(probe) + " | 80.0% |" in table
    assert rows[-1].split("|")[-4].strip() == "-"  # no benign prompts scored: no rate
    assert rows[0].split("|")[-2].strip() == "-" and rows[3].split("|")[-2].strip() == "80.0%"
    md = (out / "report.md").read_text()
    assert table in md and "](curves.png)" in md and "](asr_utility.png)" in md
    assert "| Physical | 120 | 1.7% (0.5-5.9) |" in md  # ASR by AdvBench harm category
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["sft"] == RESULTS["sft"]
    assert saved["rates"]["sft"]["utility"] == pytest.approx(
        {"rate": 71 / 150, "low": 0.3951, "high": 0.5529, "k": 71, "n": 150}, abs=1e-4
    )  # by hand
    assert math.isnan(saved["rates"]["adaptive-critic"]["over_refusal"]["rate"])


def test_curves_plot_is_drawn(report):
    """Three panels side by side, each with coloured lines in it (not a blank canvas)."""
    import numpy as np
    from matplotlib.image import imread

    image = imread(report[0] / "curves.png")[..., :3]
    height, width, _ = image.shape
    assert (width, height) == (1430, 418)  # 13 x 3.8 inches at 110 dpi

    # one colour per arm in results order: C1 orange = sft, C2 green = fixed (C0 = reference)
    def pixels(rgb):
        return np.all(np.abs(image - np.array(rgb) / 255) < 0.05, axis=-1)

    orange, green = pixels([0xFF, 0x7F, 0x0E]), pixels([0x2C, 0xA0, 0x2C])
    blue = pixels([0x1F, 0x77, 0xB4])
    thirds = [slice(k * width // 3, (k + 1) * width // 3) for k in range(3)]
    assert [green[:, t].sum() > 50 for t in thirds] == [True, True, True]
    # sft logged no beta: its colour is in the loss and KL panels only (legend included)
    assert [orange[:, t].sum() > 50 for t in thirds] == [True, True, False]
    assert blue.sum() == 0  # the reference has no training curve


def test_read_metrics_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 0, "loss": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        read_metrics(bad)
    bad.write_text('{"loss": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*step"):
        read_metrics(bad)


def test_empty_results(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        write_report(tmp_path, {})
