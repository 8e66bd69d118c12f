"""reports/stats/: per-cell tests against the baselines (paired t-test over seeds, McNemar on
matched per-image predictions), bootstrap CIs over test images, Holm within each table's family,
and the significance marks the tables print.

The tests are computed over all cells at once: seed means by one groupby, predictions read
once per run (two columns), McNemar p-values and bootstrap intervals vectorised
(`stats.mcnemar_exact_pvalues`, `stats.bootstrap_accuracy_cis`; same numbers as the per-cell calls).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import stats
from .predictions import Predictions, discordant
from .results import BASELINE_KEY, KEY, Lookup, Results

MARKS = ["†", "‡", "§", "¶"]


def tested(baselines: list[str], method: str, baseline: str) -> bool:
    """Test method vs baseline, but each pair of baselines only once (CoOp vs zero-shot, not zero-shot vs CoOp)."""
    if method == baseline:
        return False
    return method not in baselines or baselines.index(method) > baselines.index(baseline)


def legend(baselines: list[str]) -> str:
    parts = [f"{MARKS[i % len(MARKS)]} differs from {b} (paired t-test over seeds, Holm-adjusted within this table, p < 0.05)"
             for i, b in enumerate(baselines)]
    return "Marks: " + "; ".join(parts) + ". Cells are mean ± std over seeds; (n=…) marks cells with fewer seeds than the table's others."


class Marks:
    """Significance marks of table cells: one symbol per baseline a cell differs from (Holm p < 0.05)."""

    def __init__(self, ttests: pd.DataFrame, baselines: list[str]):
        self.baselines = baselines
        self.sig = Lookup(ttests[ttests["p_holm"] < stats.ALPHA]) if not ttests.empty else None

    def __call__(self, **cell) -> str:
        if self.sig is None:
            return ""
        return "".join(MARKS[i % len(MARKS)] for i, b in enumerate(self.baselines) if not self.sig(**cell, baseline=b).empty)


def holm_by_family(frame: pd.DataFrame) -> pd.DataFrame:
    """Add `p_holm`: Holm-adjusted p within each `family`."""
    if frame.empty:
        return frame
    frame = frame.copy()
    frame["p_holm"] = np.nan
    for _, idx in frame.groupby("family").groups.items():
        frame.loc[idx, "p_holm"] = stats.holm(frame.loc[idx, "p"].to_numpy())
    return frame


def write_stats(res: Results, frame: pd.DataFrame, name: str, caption: str) -> None:
    if frame.empty:
        res.note(f"stats/{name}: no pairs to test ({caption.split(',')[0]}).")
        return
    res.write(frame, f"stats/{name}", caption=caption, index=False)


def _first_rows(frame: pd.DataFrame, by: list[str]) -> dict:
    """key (+ seed) → {"has_predictions", "metrics_dir"} of the first row (table order)."""
    cols = ["has_predictions", "metrics_dir"]
    first = frame.groupby(by, sort=False)[cols].first()
    return {k: dict(zip(cols, v)) for k, v in zip(first.index, first.itertuples(index=False, name=None))}


def pairwise(res: Results, preds: Predictions) -> None:
    """Per cell, method vs each baseline: paired t-test over seeds and McNemar per matched seed (Holm per family)."""
    df = res.scored
    cell_seed = df.groupby(KEY + ["seed"])["top1"].mean()
    base_seed = df.groupby(BASELINE_KEY + ["method", "shots", "seed"])["top1"].mean()
    base_cells = {k: g.droplevel(list(range(len(BASELINE_KEY) + 2))) for k, g in base_seed.groupby(level=list(range(len(BASELINE_KEY) + 2)))}
    base_shots: dict[tuple, list[int]] = {}
    for k in base_cells:
        base_shots.setdefault(k[:-1], []).append(k[-1])
    use_preds = preds.runs is not None and {"metrics_dir", "has_predictions"} <= set(df.columns)
    first_cell = _first_rows(df, KEY + ["seed"]) if use_preds else {}
    first_base = _first_rows(df, BASELINE_KEY + ["method", "shots", "seed"]) if use_preds else {}
    trows, tpairs, pairs = [], [], []
    for key, a in cell_seed.groupby(level=list(range(len(KEY)))):
        a = a.droplevel(list(range(len(KEY))))
        cell = dict(zip(KEY, key))
        for baseline in res.baselines:
            if not tested(res.baselines, cell["method"], baseline):
                continue
            bkey = tuple(cell[k] for k in BASELINE_KEY) + (baseline,)
            shots = base_shots.get(bkey, [])
            if cell["shots"] in shots:
                k_b = cell["shots"]
            elif baseline == "zeroshot" and shots:  # zero-shot does not depend on shots: any K is accepted
                k_b = min(shots)
            else:
                continue
            b = base_cells[bkey + (k_b,)]
            common = a.index.intersection(b.index)
            if len(common) == 0 and len(b) == 1 and baseline == "zeroshot":
                common = a.index  # a deterministic zero-shot evaluated once pairs with every seed
                b = pd.Series(b.iloc[0], index=common)
            family = res.table_id(cell["protocol"], cell["backbone_key"], cell["shots"])
            va, vb = a.loc[common].to_numpy(dtype=float), b.loc[common].to_numpy(dtype=float)
            trows.append({**cell, "baseline": baseline, "family": family,
                          "mean_diff": float((a.loc[common] - b.loc[common]).mean()) if len(common) else np.nan})
            tpairs.append((va, vb))
            if not use_preds:
                continue
            base_first = first_base[bkey + (k_b, base_cells[bkey + (k_b,)].index[0])]
            for seed in common:
                ra = first_cell[key + (seed,)]
                rb = first_base.get(bkey + (k_b, seed), base_first)
                pa = preds.get(ra["metrics_dir"], ra["has_predictions"])
                pb = preds.get(rb["metrics_dir"], rb["has_predictions"])
                if pa is None or pb is None:
                    continue
                counts = discordant(pa, pb)
                if counts is not None:
                    pairs.append(({**cell, "baseline": baseline, "family": family, "seed": seed}, counts))
    for row, t in zip(trows, stats.paired_ttests(tpairs)):  # all cells at once, the per-pair numbers
        row.update(n_seeds=t.n, mean_diff=row.pop("mean_diff"), t=t.statistic, p=t.pvalue, note=t.note)
    res.ttests = holm_by_family(pd.DataFrame(trows))
    mrows = []
    if pairs:
        n, a_only, b_only = (np.array(v) for v in zip(*(c for _, c in pairs)))
        p = stats.mcnemar_exact_pvalues(a_only, b_only)
        mrows = [{**row, "n_images": int(n[i]), "a_only": int(a_only[i]), "b_only": int(b_only[i]), "p": float(p[i])}
                 for i, (row, _) in enumerate(pairs)]
    res.mcnemar = holm_by_family(pd.DataFrame(mrows))
    write_stats(res, res.ttests, "ttest_vs_baselines", "Paired t-test over seeds, method vs baseline (Holm within each table's family)")
    write_stats(res, res.mcnemar, "mcnemar_vs_baselines", "Exact McNemar on matched per-image predictions of the same seed (Holm within each table's family)")


def bootstrap(res: Results, preds: Predictions) -> None:
    """Bootstrap 95% CI over test images of the seed-mean top-1, per cell with predictions."""
    cols = ["n_seeds", "n_images", "acc_from_predictions", "ci_low", "ci_high"]
    rows, samples = [], []
    if preds.runs is not None and {"metrics_dir", "has_predictions"} <= set(res.scored.columns):
        for key, r in res.scored.groupby(KEY):
            correct = [c[1] for d, h in zip(r["metrics_dir"], r["has_predictions"]) if (c := preds.get(d, h)) is not None]
            if not correct:
                continue
            rows.append({**dict(zip(KEY, key)), "n_seeds": len(correct), "n_images": int(sum(len(c) for c in correct)),
                         "acc_from_predictions": 100.0 * float(np.mean([c.mean() for c in correct]))})
            samples.append(correct)
    if rows:
        ci = stats.bootstrap_accuracy_cis(samples, n_resamples=res.n_resamples)
        for row, (low, high) in zip(rows, ci):
            row.update(ci_low=float(low), ci_high=float(high))
    res.boot = pd.DataFrame(rows, columns=KEY + cols)
    if res.boot.empty:
        res.note("No predictions.parquet found: bootstrap CIs and McNemar tests skipped.")
        return
    write_stats(res, res.boot, "bootstrap_ci", "Bootstrap 95% CI over test images (percentile, seeds resampled independently) of the seed-mean top-1")


def wilcoxon_rows(res: Results, means: pd.DataFrame, family: str, **cell) -> list[dict]:
    """Wilcoxon signed-rank across datasets (rows of `means`, methods as columns), each method vs each baseline."""
    out = []
    for baseline in res.baselines:
        if baseline not in means:
            continue
        for m in means.columns:
            if not tested(res.baselines, m, baseline):
                continue
            pair = means[[m, baseline]].dropna()
            w = stats.wilcoxon_test(pair[m], pair[baseline])
            out.append({**cell, "method": m, "baseline": baseline, "family": family, "n_datasets": len(pair),
                        "statistic": w.statistic, "p": w.pvalue, "note": w.note})
    return out
