import json
import math

import pytest

from saferegx.eval.report import read_metrics, write_report

ARMS = ["reference", "sft", "fixed", "adaptive-probe", "adaptive-critic"]
RESULTS = {
    "reference": {"asr_refusal": 0.05, "asr_critic": 0.10, "utility": 0.30, "over_refusal": 0.08},
    "sft": {"asr_refusal": 0.95, "asr_critic": 0.90, "utility": 0.70, "over_refusal": 0.0},
    "fixed": {"asr_refusal": 0.20, "asr_critic": 0.25, "utility": 0.40, "over_refusal": 0.05},
    "adaptive-probe": {"asr_refusal": 0.075, "asr_critic": None, "utility": 0.65,
                       "over_refusal": 0.05},
    "adaptive-critic": {"asr_refusal": 0.10, "asr_critic": 0.15, "utility": 0.60,
                        "over_refusal": float("nan")},
}


def _log(arm_index, steps=20):
    return [{"step": s, "loss": 3.0 / (s + 1) + arm_index, "ce": 2.0, "kl": 0.1 * s * arm_index,
             "beta": 0.1 + 0.04 * arm_index, "risk": 0.5} for s in range(steps)]


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
    assert "| sft | 95.0% | 90.0% | 70.0% | 0.0% |" in table
    assert "| adaptive-probe | 7.5% | - | 65.0% | 5.0% |" in table
    assert rows[-1].split("|")[-2].strip() == "-"  # NaN over-refusal
    md = (out / "report.md").read_text()
    assert table in md and "](curves.png)" in md and "](asr_utility.png)" in md
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["sft"] == RESULTS["sft"]
    assert math.isnan(saved["results"]["adaptive-critic"]["over_refusal"])


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
