"""Rates and agreement with 95% intervals: how far to trust an ASR, and a judge against labels.

- :func:`wilson`: the Wilson score interval of a binomial rate (every ASR, and accuracy). It stays
  inside [0, 1] and keeps a sensible width at 0/n and n/n, where the normal ("Wald") interval
  collapses to a point.
- :func:`f1` and :func:`cohen_kappa` are point estimates; their intervals come from
  :func:`bootstrap_interval`, a seeded percentile bootstrap over the labelled items (2,000
  resamples by default), since neither has a simple closed-form interval.
- :func:`agreement` puts it together for one judge: counts, accuracy (Wilson), F1 and Cohen's
  kappa (bootstrap).

Undefined values are NaN, not 0: F1 when there is no positive in the labels nor in the
predictions; kappa when chance agreement is 1 (labels and predictions both constant and equal).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(rate, low, high)``: the rate ``successes / n`` and its Wilson score interval.

    ``n == 0`` gives ``(nan, 0.0, 1.0)``: no data, no information.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return float("nan"), 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the exact ends at 0/n and n/n (the formula gives them up to rounding)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return p, low, high


def _pairs(y_true: Sequence, y_pred: Sequence) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true).astype(bool).reshape(-1)
    p = np.asarray(y_pred).astype(bool).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"{t.size} labels but {p.size} predictions")
    return t, p


def _counts(t: np.ndarray, p: np.ndarray, axis=-1):
    tp = (t & p).sum(axis)
    fp = (~t & p).sum(axis)
    fn = (t & ~p).sum(axis)
    tn = (~t & ~p).sum(axis)
    return tp, fp, fn, tn


def _f1(tp, fp, fn, tn):
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)


def _kappa(tp, fp, fn, tn):
    tp, fp, fn, tn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn, tn))
    n = tp + fp + fn + tn
    po = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pe < 1, (po - pe) / np.where(pe < 1, 1 - pe, 1), np.nan)


def f1(y_true: Sequence, y_pred: Sequence) -> float:
    """F1 of the positive class (1 = successful attack): ``2 TP / (2 TP + FP + FN)``."""
    return float(_f1(*_counts(*_pairs(y_true, y_pred))))


def cohen_kappa(y_true: Sequence, y_pred: Sequence) -> float:
    """Cohen's kappa: ``(p_o - p_e) / (1 - p_e)``, agreement beyond what the two marginals give
    by chance."""
    return float(_kappa(*_counts(*_pairs(y_true, y_pred))))


_STATS: dict[str, Callable] = {
    "f1": _f1,
    "kappa": _kappa,
    "accuracy": lambda tp, fp, fn, tn: (tp + tn) / (tp + fp + fn + tn),
}


def bootstrap_interval(
    y_true: Sequence,
    y_pred: Sequence,
    statistic: str = "kappa",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` of ``statistic`` (``"f1"``, ``"kappa"`` or
    ``"accuracy"``), resampling (label, prediction) pairs with replacement; seeded, so the same
    inputs give the same interval. Resamples where the statistic is undefined are skipped."""
    if statistic not in _STATS:
        raise ValueError(f"statistic must be one of {sorted(_STATS)}, got {statistic!r}")
    _z(confidence)
    t, p = _pairs(y_true, y_pred)
    if t.size == 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, t.size, size=(n_resamples, t.size))
    values = _STATS[statistic](*_counts(t[idx], p[idx], axis=1))
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def agreement(
    y_true: Sequence, y_pred: Sequence, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict:
    """A judge's agreement with labels (1 = successful attack): ``n``, ``tp fp fn tn``,
    ``accuracy`` with its Wilson interval, ``f1`` and ``kappa`` with seeded bootstrap intervals;
    each interval as ``<name>_low`` / ``<name>_high``."""
    t, p = _pairs(y_true, y_pred)
    tp, fp, fn, tn = (int(v) for v in _counts(t, p))
    acc, acc_lo, acc_hi = wilson(tp + tn, t.size, confidence)
    out = {
        "n": int(t.size),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "accuracy": acc,
        "accuracy_low": acc_lo,
        "accuracy_high": acc_hi,
    }
    for name in ("f1", "kappa"):
        out[name] = float(_STATS[name](tp, fp, fn, tn))
        out[f"{name}_low"], out[f"{name}_high"] = bootstrap_interval(t, p, name, confidence, n_resamples, seed)
    return out
