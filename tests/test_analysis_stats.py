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


def test_wilcoxon_vectorised_permutation_equals_scipy():
    # Ties or zeros with n ≤ 13: scipy runs a permutation test one sign flip at a time; ours is
    # the same test with a vectorised statistic and must give the same statistic and p.
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(40):
        n = int(rng.integers(6, 12))
        d = rng.integers(-3, 4, n).astype(float)  # small integers: ties and zeros on most draws
        ours = stats.wilcoxon_test(d, np.zeros(n))
        if np.isnan(ours.pvalue):
            continue
        ref = sps.wilcoxon(d)
        assert ours.pvalue == float(ref.pvalue) and ours.statistic == float(ref.statistic), d
        checked += 1
    assert checked > 25


def test_mcnemar_vectorised_equals_statsmodels_per_table():
    rng = np.random.default_rng(4)
    a_only, b_only = rng.integers(0, 40, 300), rng.integers(0, 40, 300)
    a_only[:5] = 0
    b_only[:3] = 0  # includes the 0/0 table (p = 1)
    got = stats.mcnemar_exact_pvalues(a_only, b_only)
    for i in range(len(got)):
        a = np.array([True] * 7 + [True] * a_only[i] + [False] * b_only[i] + [False] * 2)
        b = np.array([True] * 7 + [False] * a_only[i] + [True] * b_only[i] + [False] * 2)
        assert got[i] == stats.mcnemar_test(a, b).pvalue


def test_bootstrap_vectorised_equals_per_cell():
    # Same numbers as one scipy.stats.bootstrap call per cell: several size groups, unequal seeds,
    # an empty seed, a degenerate (all-correct) cell, and a batch smaller than n_resamples.
    rng = np.random.default_rng(5)
    cells = [[rng.random(100) < p for _ in range(3)] for p in rng.uniform(0.2, 0.9, 12)]
    cells += [[rng.random(40) < 0.5, rng.random(70) < 0.8] for _ in range(4)]
    cells += [[np.ones(30, bool), np.ones(30, bool)], [np.array([], bool)], [rng.random(25) < 0.5, np.array([], bool)]]
    got = stats.bootstrap_accuracy_cis(cells, n_resamples=300, seed=2)
    for cell, (low, high) in zip(cells, got):
        ref = stats.bootstrap_accuracy_ci(cell, n_resamples=300, seed=2)
        if np.isnan(ref[0]):
            assert np.isnan(low) and np.isnan(high)
        else:
            assert (low, high) == ref
    big = [[rng.random(12000) < 0.6, rng.random(12000) < 0.7] for _ in range(2)]  # batch = 833 < 1000 resamples
    got = stats.bootstrap_accuracy_cis(big, n_resamples=1000)
    assert [tuple(g) for g in got] == [stats.bootstrap_accuracy_ci(c, n_resamples=1000) for c in big]


def test_paired_ttests_vectorised_equals_per_pair():
    rng = np.random.default_rng(6)
    pairs = []
    for i in range(400):
        n = int(rng.integers(1, 6))
        a = np.round(rng.uniform(40, 80, n), 2)
        b = a - 1.5 if i % 10 == 0 else a - np.round(rng.normal(0, 2, n), 2)  # every 10th: constant difference
        pairs.append((a, b))
    same = lambda x, y: x == y or (np.isnan(x) and np.isnan(y))
    got = stats.paired_ttests(pairs)
    assert sum(not np.isnan(g.pvalue) for g in got) > 200
    for g, (a, b) in zip(got, pairs):
        r = stats.paired_ttest(a, b)
        assert g.n == r.n and g.note == r.note and same(g.pvalue, r.pvalue) and same(g.statistic, r.statistic)
