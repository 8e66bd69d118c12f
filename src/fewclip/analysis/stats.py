"""Statistical helpers (SPEC §5): thin, tested wrappers around scipy, statsmodels and scikit-posthocs.

Conventions: p-values are floats or NaN; a test that cannot say anything useful returns a `note`
instead of a misleading number (e.g. an exact Wilcoxon with n ≤ 5 pairs cannot reach p < 0.05).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05


@dataclass(frozen=True)
class TestResult:
    statistic: float
    pvalue: float
    n: int
    note: str = ""


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of `values` (e.g. one accuracy per seed); NaN with < 2 values."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return (np.nan, np.nan)
    if np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    low, high = stats.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return (float(low), float(high))


def paired_ttest(a, b) -> TestResult:
    """Paired t-test over seeds (scipy.stats.ttest_rel); a and b are aligned by seed."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    n = len(a)
    if n < 2:
        return TestResult(np.nan, np.nan, n, f"n/a (n={n} seed pair too few)")
    d = a - b
    if np.allclose(d, d[0]):
        return TestResult(np.nan, np.nan, n, "n/a (identical difference on every seed)")
    res = stats.ttest_rel(a, b)
    return TestResult(float(res.statistic), float(res.pvalue), n)


def mcnemar_table(a_correct, b_correct) -> np.ndarray:
    """2×2 table [[both right, A right/B wrong], [A wrong/B right, both wrong]]."""
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    return np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])


def mcnemar_test(a_correct, b_correct) -> TestResult:
    """Exact McNemar test (statsmodels, binomial on the discordant pairs) on matched per-image predictions."""
    from statsmodels.stats.contingency_tables import mcnemar

    table = mcnemar_table(a_correct, b_correct)
    res = mcnemar(table, exact=True)
    return TestResult(float(res.statistic), float(res.pvalue), int(table.sum()))


def min_exact_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p an exact Wilcoxon signed-rank test can give with n non-zero pairs."""
    return min(1.0, 2.0 / 2**n)


def wilcoxon_test(a, b, alpha: float = ALPHA) -> TestResult:
    """Wilcoxon signed-rank on paired values (e.g. seed means per dataset); refuses when n is too small."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[~np.isnan(d)]
    n = int(np.count_nonzero(d))
    if n == 0 or min_exact_wilcoxon_p(n) >= alpha:
        return TestResult(np.nan, np.nan, n, f"n/a (n={n} too small: exact p ≥ {min_exact_wilcoxon_p(max(n, 1)):.3g})")
    res = stats.wilcoxon(d)
    return TestResult(float(res.statistic), float(res.pvalue), n)


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels `method='holm'`, explicitly); NaNs stay NaN and are not counted."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=ALPHA, method="holm")[1]
    return out


def bootstrap_accuracy_ci(correct_per_seed, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0):
    """Bootstrap CI (scipy.stats.bootstrap, percentile) of the seed-mean accuracy in percent.

    `correct_per_seed` is a list of boolean arrays, one per seed; test images are resampled
    within each seed independently, and the statistic is the mean over seeds of the accuracy.
    """
    samples = [np.asarray(c, dtype=float) for c in correct_per_seed if len(c)]
    if not samples:
        return (np.nan, np.nan)
    if all(np.all(s == s[0]) for s in samples) and len({s[0] for s in samples}) == 1:
        v = 100.0 * samples[0][0]
        return (v, v)

    def statistic(*xs, axis=-1):
        return 100.0 * np.mean([np.mean(x, axis=axis) for x in xs], axis=0)

    res = stats.bootstrap(
        samples,
        statistic,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        batch=max(1, int(2e7 // max(sum(len(s) for s in samples), 1))),
        rng=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def friedman_test(wide: pd.DataFrame) -> TestResult:
    """Friedman test over methods (columns) with datasets as blocks (rows); needs ≥ 3 methods and ≥ 2 blocks."""
    k, n = wide.shape[1], wide.shape[0]
    if k < 3 or n < 2:
        return TestResult(np.nan, np.nan, n, f"n/a (needs ≥3 methods and ≥2 datasets; have {k} and {n})")
    res = stats.friedmanchisquare(*[wide[c].to_numpy() for c in wide.columns])
    return TestResult(float(res.statistic), float(res.pvalue), n)


def average_ranks(wide: pd.DataFrame) -> pd.Series:
    """Mean rank of each method (column) over blocks (rows); rank 1 = highest accuracy."""
    return wide.rank(axis=1, ascending=False).mean(axis=0).sort_values()


def nemenyi(wide: pd.DataFrame) -> pd.DataFrame:
    """Nemenyi post-hoc p-values after Friedman (scikit-posthocs), rows/cols = methods."""
    import scikit_posthocs as sp

    return sp.posthoc_nemenyi_friedman(wide.to_numpy()).set_axis(wide.columns, axis=0).set_axis(wide.columns, axis=1)


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi critical difference q_α·√(k(k+1)/(6N)) with q_α from the studentized range / √2."""
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2)
    return float(q * np.sqrt(k * (k + 1) / (6.0 * n)))


def harmonic_mean(base, new):
    """CoCoOp's H = 2·b·n/(b+n); NaN where either is missing."""
    base = np.asarray(base, dtype=float)
    new = np.asarray(new, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * base * new / (base + new)
