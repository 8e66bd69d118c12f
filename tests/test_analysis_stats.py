"""Statistical helpers against known values."""

import numpy as np
import pytest
from scipy import stats as sps

from fewclip.analysis import stats


def test_mcnemar_hand_built_table():
    # A right / B wrong on 1 image, A wrong / B right on 9: exact two-sided binomial p = 2·P(X ≤ 1 | n=10, ½) = 22/1024.
    a = np.array([True] * 20 + [True] * 1 + [False] * 9 + [False] * 5)
    b = np.array([True] * 20 + [False] * 1 + [True] * 9 + [False] * 5)
    table = stats.mcnemar_table(a, b)
    assert table.tolist() == [[20, 1], [9, 5]]
    res = stats.mcnemar_test(a, b)
    assert res.pvalue == pytest.approx(22 / 1024)
    assert res.statistic == 1


def test_holm_known_values():
    # Holm: sorted p·(m-i), made monotone; NaN entries are ignored and stay NaN.
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    adj = stats.holm(p)
    assert adj[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adj[4])


def test_paired_ttest_by_hand():
    a = np.array([70.0, 72.0, 71.0, 74.0])
    b = np.array([68.0, 71.0, 68.5, 71.0])
    d = a - b
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    p = 2 * sps.t.sf(abs(t), len(d) - 1)
    res = stats.paired_ttest(a, b)
    assert res.statistic == pytest.approx(t)
    assert res.pvalue == pytest.approx(p)
    assert np.isnan(stats.paired_ttest(a, a + 1).pvalue)  # constant differences: no test


def test_t_interval_by_hand():
    x = np.array([60.0, 62.0, 64.0])
    half = sps.t.ppf(0.975, 2) * x.std(ddof=1) / np.sqrt(3)
    assert stats.t_interval(x) == pytest.approx((62 - half, 62 + half))


def test_wilcoxon_small_n_caveat():
    res = stats.wilcoxon_test([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])
    assert np.isnan(res.pvalue) and "n=5 too small" in res.note
    res6 = stats.wilcoxon_test([1, 2, 3, 4, 5, 6], [0] * 6)
    assert res6.pvalue == pytest.approx(2 / 2**6)
    assert stats.min_exact_wilcoxon_p(5) == 0.0625


def test_bootstrap_coverage():
    # ~95% of CIs over 200 synthetic test sets cover the true accuracy (loose bounds for noise).
    rng = np.random.default_rng(1)
    p_true, covered = 0.7, 0
    for i in range(200):
        correct = [rng.random(200) < p_true, rng.random(200) < p_true]
        low, high = stats.bootstrap_accuracy_ci(correct, n_resamples=500, seed=i)
        covered += low <= 100 * p_true <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_friedman_and_cd():
    import pandas as pd

    wide = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [2.0, 3.0, 4.0, 5.0], "c": [3.0, 4.0, 5.0, 6.0]})
    res = stats.friedman_test(wide)
    assert res.statistic == pytest.approx(8.0)  # perfect ranking: 12N/(k(k+1))·Σ(R̄-2)² = 8
    assert stats.average_ranks(wide).to_dict() == {"c": 1.0, "b": 2.0, "a": 3.0}
    assert stats.critical_difference(3, 10) == pytest.approx(2.343 * np.sqrt(3 * 4 / 60), rel=1e-3)
    assert np.isnan(stats.friedman_test(wide[["a", "b"]]).pvalue)
    assert stats.harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
