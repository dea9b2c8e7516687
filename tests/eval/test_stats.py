"""Wilson intervals, F1, Cohen's kappa and the bootstrap, against values worked by hand and
scipy's Wilson interval (stored values; also the live ones where scipy is installed)."""

import math

import numpy as np
import pytest

from saferegx.eval.stats import agreement, bootstrap_interval, cohen_kappa, f1, wilson


def labels_from_counts(tp, fp, fn, tn):
    y = [1] * tp + [0] * fp + [1] * fn + [0] * tn
    p = [1] * tp + [1] * fp + [0] * fn + [0] * tn
    return y, p


def test_wilson_by_hand():
    # 8 of 10, z = 1.959964: centre (0.8 + z^2/20) / (1 + z^2/10), half-width
    # z sqrt(0.8 * 0.2 / 10 + z^2 / 400) / (1 + z^2/10)
    z = 1.959963984540054
    denom = 1 + z * z / 10
    centre = (0.8 + z * z / 20) / denom
    half = z * math.sqrt(0.016 + z * z / 400) / denom
    rate, low, high = wilson(8, 10)
    assert rate == 0.8
    assert low == pytest.approx(centre - half, abs=1e-12) and low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(centre + half, abs=1e-12) and high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_edges():
    rate, low, high = wilson(0, 20)
    assert (rate, low) == (0.0, 0.0) and high == pytest.approx(0.1611, abs=1e-4)
    rate, low, high = wilson(20, 20)
    assert (rate, high) == (1.0, 1.0) and low == pytest.approx(1 - 0.1611, abs=1e-4)
    rate, low, high = wilson(0, 0)
    assert math.isnan(rate) and (low, high) == (0.0, 1.0)
    assert wilson(5, 10, 0.99)[1] < wilson(5, 10, 0.95)[1]  # wider at 99%
    for bad in ((3, 2), (-1, 4)):
        with pytest.raises(ValueError):
            wilson(*bad)
    with pytest.raises(ValueError, match="confidence"):
        wilson(1, 2, 1.5)


# scipy 1.17.1: binomtest(k, n).proportion_ci(0.95, method="wilson"), rounded to 12 places
SCIPY_WILSON = [
    (0, 7, 0.0, 0.354330435067),
    (1, 7, 0.025679624345, 0.513127829274),
    (33, 60, 0.424919358853, 0.669063455932),
    (41, 103, 0.308833943488, 0.494613143142),
    (103, 103, 0.964045241771, 1.0),
]


@pytest.mark.parametrize("k,n,low,high", SCIPY_WILSON)
def test_wilson_matches_scipy(k, n, low, high):
    _, ours_low, ours_high = wilson(k, n)
    assert ours_low == pytest.approx(low, abs=1e-11) and ours_high == pytest.approx(high, abs=1e-11)
    try:  # and the live value, where scipy is installed
        from scipy.stats import binomtest
    except ImportError:
        return
    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert ours_low == pytest.approx(ci.low, abs=1e-12) and ours_high == pytest.approx(ci.high, abs=1e-12)


def test_f1_and_kappa_by_hand():
    y, p = labels_from_counts(tp=20, fp=5, fn=10, tn=15)
    # F1 = 2*20 / (2*20 + 5 + 10); p_o = 35/50, p_e = (25*30 + 25*20) / 50^2 = 0.5
    assert f1(y, p) == pytest.approx(40 / 55)
    assert cohen_kappa(y, p) == pytest.approx((0.7 - 0.5) / 0.5)
    # perfect agreement, perfect disagreement, a constant guess
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    assert cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == -1.0
    assert cohen_kappa([1, 0, 1, 0], [1, 1, 1, 1]) == 0.0
    # undefined: no positive anywhere (F1); both constant and equal (kappa)
    assert math.isnan(f1([0, 0], [0, 0])) and math.isnan(cohen_kappa([1, 1], [1, 1]))
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        f1([1, 0, 1], [1, 0])


def test_kappa_matches_an_independent_formula(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.8, y, 1 - y)
    m = np.zeros((2, 2))
    np.add.at(m, (y, p), 1)
    po = np.trace(m) / m.sum()
    pe = (m.sum(0) * m.sum(1)).sum() / m.sum() ** 2
    assert cohen_kappa(y, p) == pytest.approx((po - pe) / (1 - pe))


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    y, p = labels_from_counts(tp=30, fp=6, fn=9, tn=55)
    a = bootstrap_interval(y, p, "kappa", seed=3)
    assert a == bootstrap_interval(y, p, "kappa", seed=3)
    assert a != bootstrap_interval(y, p, "kappa", seed=4)
    assert a[0] < cohen_kappa(y, p) < a[1]
    low, high = bootstrap_interval(y, p, "f1")
    assert 0 < low < f1(y, p) < high <= 1
    # the bootstrap accuracy interval lands near Wilson's at n = 100
    _, wl, wh = wilson(85, 100)
    bl, bh = bootstrap_interval(y, p, "accuracy")
    assert abs(bl - wl) < 0.03 and abs(bh - wh) < 0.03
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_interval(y, p, "auroc")


def test_agreement_puts_it_together():
    y, p = labels_from_counts(tp=20, fp=5, fn=10, tn=15)
    a = agreement(y, p)
    assert (a["n"], a["tp"], a["fp"], a["fn"], a["tn"]) == (50, 20, 5, 10, 15)
    assert a["accuracy"] == 0.7 and (a["accuracy_low"], a["accuracy_high"]) == wilson(35, 50)[1:]
    assert a["kappa"] == pytest.approx(0.4) and a["f1"] == pytest.approx(40 / 55)
    for name in ("accuracy", "f1", "kappa"):
        assert a[f"{name}_low"] <= a[name] <= a[f"{name}_high"]
