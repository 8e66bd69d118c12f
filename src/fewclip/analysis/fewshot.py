"""Few-shot artifacts: tables/fewshot_<backbone>_<K>shot (+ _long), figures/fewshot_curves_<backbone>,
tables/backbones_<K>shot (backbone x method averages, with several backbones), the
Wilcoxon/Friedman/Nemenyi statistics with figures/cd_fewshot_*, and plots/fewshot_curves.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..io import write_text
from . import plots, stats
from .results import Results, per_seed_text
from .significance import Marks, holm_by_family, legend, wilcoxon_rows, write_stats
from .tables import fmt_mean_std


def write(res: Results, marks: Marks) -> None:
    fs = res.summary[(res.summary["protocol"] == "fewshot") & (res.summary["split"] == "test")]
    if fs.empty:
        res.note("No few-shot runs: few-shot tables, shot curves and CD diagrams skipped.")
        _write_curve_data(res, [])
        return
    wil, fri, averages = [], [], []
    for (bk, backbone, k), cells in fs.groupby(["backbone_key", "backbone", "shots"]):
        datasets = sorted(cells["dataset"].unique())
        methods = res.methods(cells)
        n_max = int(cells["n"].max())
        display = pd.DataFrame(index=methods, columns=datasets + ["Average"], dtype=object)
        long_rows = []
        for c in cells.to_dict("records"):
            mark = marks(protocol="fewshot", backbone_key=bk, shots=k, dataset=c["dataset"], method=c["method"])
            display.loc[c["method"], c["dataset"]] = fmt_mean_std(c["mean"], c["std"], c["n"], n_max) + mark
            per_seed = res.seeds(protocol="fewshot", backbone_key=bk, shots=k, dataset=c["dataset"], method=c["method"], split="test")
            long_rows.append({"method": c["method"], "dataset": c["dataset"], "mean": c["mean"], "std": c["std"], "n_seeds": c["n"],
                              "per_seed": per_seed_text(per_seed)})
        wide_seed = res.per_seed(protocol="fewshot", backbone_key=bk, shots=k, split="test")
        for m in methods:
            have = cells[cells["method"] == m]["dataset"].nunique()
            per_seed = wide_seed.get(m)
            if have < len(datasets) or per_seed is None:
                display.loc[m, "Average"] = f"n/a ({have}/{len(datasets)} datasets)"
                continue
            avg = per_seed.dropna(axis=0).mean(axis=1)  # seeds with every dataset
            display.loc[m, "Average"] = fmt_mean_std(avg.mean(), avg.std(), len(avg), n_max)
            averages.append({"backbone": bk, "shots": k, "method": m, "mean": avg.mean(), "std": avg.std(),
                             "n": len(avg), "n_max": n_max, "datasets": tuple(datasets)})
            long_rows.append({"method": m, "dataset": "Average", "mean": avg.mean(), "std": avg.std(), "n_seeds": len(avg),
                              "per_seed": per_seed_text(avg)})
        display = display.fillna("—")
        stem = f"tables/fewshot_{bk}_{k}shot"
        res.write(display, stem, caption=f"Few-shot top-1 accuracy (%), {backbone}, {k} shots", legend=legend(res.baselines))
        res.show(f"fewshot:{bk}", f"{backbone}, {k} shot{'' if k == 1 else 's'}", table=stem)
        res.write(pd.DataFrame(long_rows), stem + "_long", index=False, caption=f"Few-shot top-1 (numbers), {backbone}, {k} shots")
        means = cells.pivot_table(index="dataset", columns="method", values="mean")
        wil += wilcoxon_rows(res, means, family=res.table_id("fewshot", bk, k), protocol="fewshot", backbone_key=bk, shots=k, split="test")
        fri.append(_friedman(res, means, bk, backbone, k))
    write_stats(res, holm_by_family(pd.DataFrame(wil)), "wilcoxon_across_datasets",
                "Wilcoxon signed-rank across datasets on seed means, method vs baseline (Holm within each table's family)")
    write_stats(res, pd.DataFrame([f for f in fri if f]), "friedman", "Friedman test over methods with datasets as blocks")
    _backbone_summary(res, pd.DataFrame(averages))
    _shot_curves(res)


def _backbone_summary(res: Results, averages: pd.DataFrame) -> None:
    """tables/backbones_<K>shot: backbone x method, each cell the average over the datasets
    (mean ± std over seeds), when the report holds several backbones (config/backbones.yaml)."""
    if averages.empty or averages["backbone"].nunique() < 2:
        return
    for k, rows in averages.groupby("shots"):
        sets = rows.groupby("backbone")["datasets"].first()
        same = sets.nunique() == 1
        table = rows.pivot(index="backbone", columns="method", values="mean")
        display = pd.DataFrame(index=list(sets.index), columns=res.methods(rows), dtype=object)
        for r in rows.to_dict("records"):
            display.loc[r["backbone"], r["method"]] = fmt_mean_std(r["mean"], r["std"], r["n"], r["n_max"])
        if not same:  # averages over different dataset lists are not comparable: say how many each has
            display.insert(0, "datasets", [len(sets[b]) for b in display.index])
        display = display.fillna("—")
        where = f"the {len(sets.iloc[0])} datasets" if same else "each backbone's datasets (column datasets)"
        stem = f"tables/backbones_{k}shot"
        res.write(display, stem, caption=f"Few-shot top-1 (%), average over {where}, {k} shots: backbone x method")
        res.show("backbones", f"backbone x method, {k} shot{'' if k == 1 else 's'}", table=stem)
        res.write(table.reset_index(), stem + "_long", index=False,
                  caption=f"Few-shot top-1 averages (numbers), {k} shots: backbone x method")


def _friedman(res: Results, means: pd.DataFrame, bk: str, backbone: str, k: int) -> dict:
    # Ranks need every method on every dataset: keep the methods run on all datasets, unless
    # that leaves fewer than 3, then keep the datasets every method was run on.
    complete = means.dropna(axis=1)
    if complete.shape[1] < 3:
        complete = means.dropna(axis=0)
    f = stats.friedman_test(complete)
    row = {"table": res.table_id("fewshot", bk, k), "n_datasets": len(complete), "n_methods": complete.shape[1],
           "methods": ", ".join(complete.columns), "chi2": f.statistic, "p": f.pvalue, "note": f.note}
    if np.isnan(f.pvalue):
        res.note(f"CD diagram for {backbone}, {k} shots skipped: {f.note}.")
        return row
    ranks = stats.average_ranks(complete)
    pvals = stats.nemenyi(complete)
    row["cd"] = stats.critical_difference(complete.shape[1], len(complete))
    res.write(pvals, f"stats/nemenyi_fewshot_{bk}_{k}shot", caption=f"Nemenyi p-values, {backbone}, {k} shots")
    res.figure(plots.cd_diagram, res.out / "figures" / f"cd_fewshot_{bk}_{k}shot", ranks, pvals,
               f"Critical difference (Nemenyi, α=0.05), {backbone}, {k} shots, {len(complete)} datasets")
    return row


def _shot_curves(res: Results) -> None:
    df = res.scored
    rows = df[(df["protocol"] == "fewshot") & (df["split"] == "test")]
    curve_means = []
    for (bk, backbone), r in rows.groupby(["backbone_key", "backbone"]):
        datasets = sorted(r["dataset"].unique())
        data = r[["dataset", "method", "shots", "seed", "top1"]].rename(columns={"dataset": "panel"})
        per = r.pivot_table(index=["method", "shots", "seed"], columns="dataset", values="top1")
        avg = per.dropna(axis=0).mean(axis=1).rename("top1").reset_index()
        avg["panel"] = "Average"
        data = pd.concat([data, avg], ignore_index=True)
        panels = datasets + (["Average"] if len(avg) else [])
        res.figure(plots.shot_curves, res.out / "figures" / f"fewshot_curves_{bk}", data, f"{backbone}: top-1 vs shots",
                   res.methods(r), panels)
        res.show("fewshot_curves", f"{backbone}: top-1 accuracy against shots per class", figure=f"figures/fewshot_curves_{bk}")
        m = data.groupby(["panel", "method", "shots"])["top1"].mean().reset_index()
        m.insert(0, "backbone", backbone)
        curve_means.append(m)
    _write_curve_data(res, curve_means)


def _write_curve_data(res: Results, curve_means: list[pd.DataFrame]) -> None:
    """plots/fewshot_curves.csv (DVC's `plots:` source); header only when there are no few-shot runs."""
    columns = ["backbone", "dataset", "method", "shots", "top1"]
    curves = pd.concat(curve_means, ignore_index=True).rename(columns={"panel": "dataset"}) if curve_means else pd.DataFrame(columns=columns)
    path = res.out / "plots" / "fewshot_curves.csv"
    write_text(path, curves[columns].to_csv(index=False))
    res.written.append(path)
