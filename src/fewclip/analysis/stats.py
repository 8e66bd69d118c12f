"""Statistical helpers (SPEC §5): thin, tested wrappers around scipy, statsmodels and scikit-posthocs.

Conventions: p-values are floats or NaN; a test that cannot say anything useful returns a `note`
instead of a misleading number (e.g. an exact Wilcoxon with n ≤ 5 pairs cannot reach p < 0.05).
"""

from __future__ import annotations

import gc
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


def paired_ttests(pairs) -> list[TestResult]:
    """`paired_ttest` for many (a, b) pairs at once: one scipy.stats.ttest_rel call per number of
    seeds on the stacked pairs (axis=1), same results and notes as the per-pair calls."""
    out: list[TestResult | None] = [None] * len(pairs)
    by_n: dict[int, list[int]] = {}
    for i, (a, b) in enumerate(pairs):
        by_n.setdefault(len(a), []).append(i)
    for n, idx in by_n.items():
        if n < 2:
            for i in idx:
                out[i] = TestResult(np.nan, np.nan, n, f"n/a (n={n} seed pair too few)")
            continue
        a = np.array([np.asarray(pairs[i][0], dtype=float) for i in idx])
        b = np.array([np.asarray(pairs[i][1], dtype=float) for i in idx])
        d = a - b
        constant = np.isclose(d, d[:, :1]).all(axis=1)  # np.allclose(d, d[0]) per row
        res = stats.ttest_rel(a[~constant], b[~constant], axis=1) if (~constant).any() else None
        tested = iter(range(int((~constant).sum())))
        for row, i in enumerate(idx):
            if constant[row]:
                out[i] = TestResult(np.nan, np.nan, n, "n/a (identical difference on every seed)")
            else:
                j = next(tested)
                out[i] = TestResult(float(res.statistic[j]), float(res.pvalue[j]), n)
    return out


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


def mcnemar_exact_pvalues(a_only, b_only) -> np.ndarray:
    """Exact McNemar p-values of many 2×2 tables at once from their discordant counts: what
    statsmodels' `mcnemar(table, exact=True)` computes per table, min(1, 2·Binom(n, ½).cdf(min(b, c)))."""
    b = np.asarray(a_only, dtype=float)
    c = np.asarray(b_only, dtype=float)
    return np.minimum(stats.binom.cdf(np.minimum(b, c), b + c, 0.5) * 2, 1)


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
    nonzero = np.abs(d[d != 0])
    if (len(nonzero) < len(d) or len(np.unique(nonzero)) < len(nonzero)) and len(d) <= PERMUTATION_MAX_N:
        # Ties or zeros: scipy's method="auto" runs an exact permutation test over all 2ⁿ sign
        # flips, one Python call per flip. The same test with a vectorised statistic (same p).
        res = stats.permutation_test((d,), _signed_rank_sum, permutation_type="samples", vectorized=True,
                                     alternative="two-sided", axis=-1)
        r_plus = _signed_rank_sum(d)
        return TestResult(float(min(r_plus, _signed_rank_sum(-d))), float(res.pvalue), n)
    res = stats.wilcoxon(d)
    return TestResult(float(res.statistic), float(res.pvalue), n)


# scipy.stats.wilcoxon(method="auto") with ties or zeros: a permutation test when 2ⁿ is below
# its default n_resamples (9999), i.e. n ≤ 13; the normal approximation above.
PERMUTATION_MAX_N = 13


def _signed_rank_sum(d, axis=-1):
    """Wilcoxon's R+ (zeros dropped, ties get average ranks), vectorised along `axis`."""
    d = np.moveaxis(np.asarray(d, dtype=float), axis, -1)
    d = np.where(d == 0, np.nan, d)
    ranks = stats.rankdata(np.abs(d), axis=-1, nan_policy="omit")
    return np.sum(np.where(d > 0, ranks, 0.0), axis=-1)


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels `method='holm'`, explicitly); NaNs stay NaN and are not counted."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        # multipletests(method="holm") calls gc.collect(), which walks every live object (the
        # report holds ~10⁶): frozen objects are skipped, so the collection costs nothing here.
        gc.freeze()
        try:
            out[ok] = multipletests(p[ok], alpha=ALPHA, method="holm")[1]
        finally:
            gc.unfreeze()
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


def bootstrap_accuracy_cis(cells, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """`bootstrap_accuracy_ci` for many cells at once: an array [n_cells, 2] of (low, high), the same numbers.

    `bootstrap_accuracy_ci` calls scipy.stats.bootstrap with a fresh `default_rng(seed)`, so every
    cell whose seeds hold the same numbers of images draws the same resampling indices. Here they
    are drawn once per such group, in scipy's order (per batch, per sample: `integers(0, n, (batch, n))`),
    and each resample's accuracy is a count-weighted sum (one matrix product for all cells of the
    group) instead of gathering n_resamples × n values per cell. Sums of 0/1 values are exact, so the
    bootstrap distribution, and scipy.stats.quantile on it, equal scipy's; tests/test_analysis_stats.py
    checks this against the per-cell function.
    """
    out = np.full((len(cells), 2), np.nan)
    groups: dict[tuple[int, ...], list[tuple[int, list[np.ndarray]]]] = {}
    for i, cell in enumerate(cells):
        samples = [np.asarray(c, dtype=float) for c in cell if len(c)]
        if not samples:
            continue
        if all(np.all(s == s[0]) for s in samples) and len({s[0] for s in samples}) == 1:
            out[i] = 100.0 * samples[0][0]
            continue
        groups.setdefault(tuple(len(s) for s in samples), []).append((i, samples))
    alpha = np.asarray((1 - confidence) / 2, dtype=float)
    interval = np.stack((alpha, 1 - alpha), axis=-1)
    for sizes, members in groups.items():
        batch = max(1, int(2e7 // max(sum(sizes), 1)))  # bootstrap_accuracy_ci's batch: the same draws
        rng = np.random.default_rng(seed)
        values = [np.stack([samples[j] for _, samples in members]) for j in range(len(sizes))]  # [cells, n_j]
        means: list[list[np.ndarray]] = [[] for _ in sizes]
        for k in range(0, n_resamples, batch):
            b = min(batch, n_resamples - k)
            for j, n in enumerate(sizes):
                draw = rng.integers(0, n, (b, n))
                counts = np.bincount((draw + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
                means[j].append((values[j] @ counts.T.astype(float)) / n)  # [cells, b]
        theta = 100.0 * np.mean([np.concatenate(m, axis=-1) for m in means], axis=0)
        ci = stats.quantile(theta, interval, axis=-1)
        out[[i for i, _ in members]] = ci
    return out


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
