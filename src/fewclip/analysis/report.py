"""Assemble reports/: tables/, figures/, stats/, plots/ (DVC plot data) and README.md (index + notes).

Every output is built from the collected table (one row per metrics.json) and, for the
per-image statistics, the runs' predictions.parquet. Partial grids are fine: an output with
no data is skipped and the skip is listed under "Notes" in reports/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import write_text
from . import paper, plots, stats
from .collect import check_consistency
from .tables import fmt_mean_std, write_table

KEY = ["protocol", "backbone_key", "backbone", "shots", "dataset", "eval_dataset", "split", "method"]
BASELINE_KEY = ["protocol", "backbone_key", "dataset", "eval_dataset", "split"]  # a baseline may differ in shots
MARKS = ["†", "‡", "§", "¶"]
DEFAULT_BASELINES = ["zeroshot", "coop"]


@dataclass
class Report:
    table: pd.DataFrame
    runs: Path | None
    out: Path
    baselines: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))
    n_resamples: int = 2000
    notes: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    _pred_cache: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ data
    def __post_init__(self):
        df = self.table.copy()
        for col, default in [("backbone", None), ("eval_dataset", None), ("eval_split", "test"), ("top1", np.nan)]:
            if col not in df:
                df[col] = default
        df["backbone"] = df["backbone"].fillna(df["backbone_key"])
        df["eval_dataset"] = df["eval_dataset"].fillna(df["dataset"])
        df["split"] = df["eval_split"].fillna("test")
        df["top1"] = pd.to_numeric(df["top1"], errors="coerce")
        if "train_seconds" in df:
            df["train_minutes"] = pd.to_numeric(df["train_seconds"], errors="coerce") / 60.0
        if {"eval_seconds", "n_test"} <= set(df.columns):
            df["infer_ms_per_image"] = 1000.0 * pd.to_numeric(df["eval_seconds"], errors="coerce") / pd.to_numeric(df["n_test"], errors="coerce")
        df["backbone_norm"] = df["backbone"].map(paper.norm_backbone)
        df["eval_dataset_norm"] = df["eval_dataset"].map(paper.norm_dataset)
        self.df = df
        self._by_method_cell = {k: g for k, g in df[df["top1"].notna()].groupby(BASELINE_KEY + ["method"])}
        self.summary = self._summarise()
        self.ttests = pd.DataFrame()

    def _summarise(self) -> pd.DataFrame:
        """Mean, std, n over seeds for every (protocol, backbone, shots, dataset, eval_dataset, split, method)."""
        g = self.df.groupby(KEY, dropna=False)["top1"]
        out = g.agg(mean="mean", std="std", n="count").reset_index()
        return out

    def seeds(self, **where) -> pd.Series:
        """top1 per seed for the rows matching `where` (NaN top1 dropped)."""
        mask = np.ones(len(self.df), dtype=bool)
        for k, v in where.items():
            mask &= (self.df[k] == v).to_numpy()
        rows = self.df[mask].dropna(subset=["top1"])
        return rows.groupby("seed")["top1"].mean()

    def methods(self, frame: pd.DataFrame) -> list[str]:
        return paper.method_order(frame["method"].unique())

    def note(self, text: str) -> None:
        self.notes.append(text)

    # ------------------------------------------------------------ predictions
    def correct(self, row: pd.Series) -> pd.Series | None:
        """Per-image correctness (index = image path) of one metrics row, or None without predictions."""
        if self.runs is None or not bool(row.get("has_predictions", False)):
            return None
        path = self.runs / row["metrics_dir"] / "predictions.parquet"
        if path not in self._pred_cache:
            if not path.is_file():
                self._pred_cache[path] = None
            else:
                pred = pd.read_parquet(path, columns=["path", "correct"])
                self._pred_cache[path] = pred.set_index("path")["correct"].astype(bool)
        return self._pred_cache[path]

    # ------------------------------------------------------------ statistics
    def baseline_rows(self, cell: dict, baseline: str) -> pd.DataFrame:
        """Rows of `baseline` matching a cell; zero-shot does not depend on shots, so any K is accepted."""
        rows = self._by_method_cell.get(tuple(cell[k] for k in BASELINE_KEY) + (baseline,))
        if rows is None:
            return self.df.iloc[:0]
        exact = rows[rows["shots"] == cell["shots"]]
        if not exact.empty or baseline != "zeroshot" or rows.empty:
            return exact
        return rows[rows["shots"] == rows["shots"].min()]

    def table_id(self, protocol: str, backbone_key: str, shots: int) -> str:
        return f"{protocol}_{backbone_key}" if protocol == "base2new" else f"{protocol}_{backbone_key}_{shots}shot"

    def pairwise(self) -> None:
        """Per cell, method vs each baseline: paired t-test over seeds and McNemar per matched seed (Holm per family)."""
        trows, mrows = [], []
        df = self.df[self.df["top1"].notna()]
        for key, rows in df.groupby(KEY):
            cell = dict(zip(KEY, key))
            for baseline in self.baselines:
                if not self._tested(cell["method"], baseline):
                    continue
                base = self.baseline_rows(cell, baseline)
                if base.empty:
                    continue
                a = rows.groupby("seed")["top1"].mean()
                b = base.groupby("seed")["top1"].mean()
                common = a.index.intersection(b.index)
                if len(common) == 0 and base["seed"].nunique() == 1 and baseline == "zeroshot":
                    common = a.index  # a deterministic zero-shot evaluated once pairs with every seed
                    b = pd.Series(b.iloc[0], index=common)
                res = stats.paired_ttest(a.loc[common], b.loc[common])
                family = self.table_id(cell["protocol"], cell["backbone_key"], cell["shots"])
                trows.append({**cell, "baseline": baseline, "family": family, "n_seeds": res.n,
                              "mean_diff": float((a.loc[common] - b.loc[common]).mean()) if len(common) else np.nan,
                              "t": res.statistic, "p": res.pvalue, "note": res.note})
                # plain dicts of the two columns `correct` reads: row access on the wide frame is slow
                by_seed = _prediction_rows(rows)
                base_by_seed = _prediction_rows(base)
                for seed in common:
                    ra = by_seed[seed]
                    rb = base_by_seed.get(seed, next(iter(base_by_seed.values())))
                    ca, cb = self.correct(ra), self.correct(rb)
                    if ca is None or cb is None:
                        continue
                    joined = _match_images(ca, cb)
                    if joined.empty:
                        continue
                    table = stats.mcnemar_table(joined["a"], joined["b"])
                    mres = stats.mcnemar_test(joined["a"], joined["b"])
                    mrows.append({**cell, "baseline": baseline, "family": family, "seed": seed, "n_images": mres.n,
                                  "a_only": int(table[0, 1]), "b_only": int(table[1, 0]), "p": mres.pvalue})
        self.ttests = _holm_by_family(pd.DataFrame(trows))
        self.mcnemar = _holm_by_family(pd.DataFrame(mrows))
        self._write_stats(self.ttests, "ttest_vs_baselines", "Paired t-test over seeds, method vs baseline (Holm within each table's family)")
        self._write_stats(self.mcnemar, "mcnemar_vs_baselines", "Exact McNemar on matched per-image predictions of the same seed (Holm within each table's family)")

    def _tested(self, method: str, baseline: str) -> bool:
        """Test method vs baseline, but each pair of baselines only once (CoOp vs zero-shot, not zero-shot vs CoOp)."""
        if method == baseline:
            return False
        return method not in self.baselines or self.baselines.index(method) > self.baselines.index(baseline)

    def marks(self, **cell) -> str:
        """Significance marks of one table cell: one symbol per baseline it differs from (Holm p < 0.05)."""
        if self.ttests.empty:
            return ""
        t = self.ttests
        mask = np.ones(len(t), dtype=bool)
        for k, v in cell.items():
            mask &= (t[k] == v).to_numpy()
        out = ""
        for i, baseline in enumerate(self.baselines):
            hit = t[mask & (t["baseline"] == baseline).to_numpy()]
            if not hit.empty and (hit["p_holm"] < stats.ALPHA).any():
                out += MARKS[i % len(MARKS)]
        return out

    def legend(self) -> str:
        parts = [f"{MARKS[i % len(MARKS)]} differs from {b} (paired t-test over seeds, Holm-adjusted within this table, p < 0.05)"
                 for i, b in enumerate(self.baselines)]
        return "Marks: " + "; ".join(parts) + ". Cells are mean ± std over seeds; (n=…) marks cells with fewer seeds than the table's others."

    def _write_stats(self, frame: pd.DataFrame, name: str, caption: str) -> None:
        if frame.empty:
            self.note(f"stats/{name}: no pairs to test ({caption.split(',')[0]}).")
            return
        self.written += write_table(frame, self.out / "stats" / name, caption=caption, index=False)

    # --------------------------------------------------------------- few-shot
    def fewshot(self) -> None:
        fs = self.summary[(self.summary["protocol"] == "fewshot") & (self.summary["split"] == "test")]
        if fs.empty:
            self.note("No few-shot runs: few-shot tables, shot curves and CD diagrams skipped.")
            self._write_curve_data([])
            return
        wil, fri = [], []
        for (bk, backbone, k), cells in fs.groupby(["backbone_key", "backbone", "shots"]):
            datasets = sorted(cells["dataset"].unique())
            methods = self.methods(cells)
            n_max = int(cells["n"].max())
            display = pd.DataFrame(index=methods, columns=datasets + ["Average"], dtype=object)
            long_rows = []
            for _, c in cells.iterrows():
                mark = self.marks(protocol="fewshot", backbone_key=bk, shots=k, dataset=c["dataset"], method=c["method"])
                display.loc[c["method"], c["dataset"]] = fmt_mean_std(c["mean"], c["std"], c["n"], n_max) + mark
                per_seed = self.seeds(protocol="fewshot", backbone_key=bk, shots=k, dataset=c["dataset"], method=c["method"], split="test")
                long_rows.append({"method": c["method"], "dataset": c["dataset"], "mean": c["mean"], "std": c["std"], "n_seeds": c["n"],
                                  "per_seed": _per_seed_text(per_seed)})
            wide_seed = self._per_seed(protocol="fewshot", backbone_key=bk, shots=k, split="test")
            for m in methods:
                have = cells[cells["method"] == m]["dataset"].nunique()
                per_seed = wide_seed.get(m)
                if have < len(datasets) or per_seed is None:
                    display.loc[m, "Average"] = f"n/a ({have}/{len(datasets)} datasets)"
                    continue
                avg = per_seed.dropna(axis=0).mean(axis=1)  # seeds with every dataset
                display.loc[m, "Average"] = fmt_mean_std(avg.mean(), avg.std(), len(avg), n_max)
                long_rows.append({"method": m, "dataset": "Average", "mean": avg.mean(), "std": avg.std(), "n_seeds": len(avg),
                                  "per_seed": _per_seed_text(avg)})
            display = display.fillna("—")
            stem = self.out / "tables" / f"fewshot_{bk}_{k}shot"
            self.written += write_table(display, stem, caption=f"Few-shot top-1 accuracy (%), {backbone}, {k} shots", legend=self.legend())
            self.written += write_table(pd.DataFrame(long_rows), stem.with_name(stem.name + "_long"), index=False,
                                        caption=f"Few-shot top-1 (numbers), {backbone}, {k} shots")
            means = cells.pivot_table(index="dataset", columns="method", values="mean")
            wil += self._wilcoxon(means, family=self.table_id("fewshot", bk, k), protocol="fewshot", backbone_key=bk, shots=k, split="test")
            fri.append(self._friedman(means, bk, backbone, k))
        self._write_stats(_holm_by_family(pd.DataFrame(wil)), "wilcoxon_across_datasets",
                          "Wilcoxon signed-rank across datasets on seed means, method vs baseline (Holm within each table's family)")
        self._write_stats(pd.DataFrame([f for f in fri if f]), "friedman", "Friedman test over methods with datasets as blocks")
        self._shot_curves(fs)

    def _per_seed(self, **where) -> dict[str, pd.DataFrame]:
        """method → DataFrame seeds × datasets of top1, for rows matching `where`."""
        mask = np.ones(len(self.df), dtype=bool)
        for k, v in where.items():
            mask &= (self.df[k] == v).to_numpy()
        rows = self.df[mask & self.df["top1"].notna().to_numpy()]
        return {m: r.pivot_table(index="seed", columns="eval_dataset", values="top1") for m, r in rows.groupby("method")}

    def _wilcoxon(self, means: pd.DataFrame, family: str, **cell) -> list[dict]:
        out = []
        for baseline in self.baselines:
            if baseline not in means:
                continue
            for m in means.columns:
                if not self._tested(m, baseline):
                    continue
                pair = means[[m, baseline]].dropna()
                res = stats.wilcoxon_test(pair[m], pair[baseline])
                out.append({**cell, "method": m, "baseline": baseline, "family": family, "n_datasets": len(pair),
                            "statistic": res.statistic, "p": res.pvalue, "note": res.note})
        return out

    def _friedman(self, means: pd.DataFrame, bk: str, backbone: str, k: int) -> dict | None:
        # Ranks need every method on every dataset: keep the methods run on all datasets, unless
        # that leaves fewer than 3, then keep the datasets every method was run on.
        complete = means.dropna(axis=1)
        if complete.shape[1] < 3:
            complete = means.dropna(axis=0)
        res = stats.friedman_test(complete)
        row = {"table": self.table_id("fewshot", bk, k), "n_datasets": len(complete), "n_methods": complete.shape[1],
               "methods": ", ".join(complete.columns), "chi2": res.statistic, "p": res.pvalue, "note": res.note}
        if np.isnan(res.pvalue):
            self.note(f"CD diagram for {backbone}, {k} shots skipped: {res.note}.")
            return row
        ranks = stats.average_ranks(complete)
        pvals = stats.nemenyi(complete)
        row["cd"] = stats.critical_difference(complete.shape[1], len(complete))
        name = f"nemenyi_fewshot_{bk}_{k}shot"
        self.written += write_table(pvals, self.out / "stats" / name, caption=f"Nemenyi p-values, {backbone}, {k} shots")
        self.written += plots.cd_diagram(ranks, pvals, self.out / "figures" / f"cd_fewshot_{bk}_{k}shot",
                                         f"Critical difference (Nemenyi, α=0.05), {backbone}, {k} shots, {len(complete)} datasets")
        return row

    def _shot_curves(self, fs: pd.DataFrame) -> None:
        rows = self.df[(self.df["protocol"] == "fewshot") & (self.df["split"] == "test") & self.df["top1"].notna()]
        curve_means = []
        for (bk, backbone), r in rows.groupby(["backbone_key", "backbone"]):
            datasets = sorted(r["dataset"].unique())
            data = r[["dataset", "method", "shots", "seed", "top1"]].rename(columns={"dataset": "panel"})
            per = r.pivot_table(index=["method", "shots", "seed"], columns="dataset", values="top1")
            avg = per.dropna(axis=0).mean(axis=1).rename("top1").reset_index()
            avg["panel"] = "Average"
            data = pd.concat([data, avg], ignore_index=True)
            panels = datasets + (["Average"] if len(avg) else [])
            methods = self.methods(r)
            self.written += plots.shot_curves(data, self.out / "figures" / f"fewshot_curves_{bk}", f"{backbone}: top-1 vs shots",
                                              methods, panels)
            m = data.groupby(["panel", "method", "shots"])["top1"].mean().reset_index()
            m.insert(0, "backbone", backbone)
            curve_means.append(m)
        self._write_curve_data(curve_means)

    def _write_curve_data(self, curve_means: list[pd.DataFrame]) -> None:
        """plots/fewshot_curves.csv (DVC's `plots:` source); header only when there are no few-shot runs."""
        columns = ["backbone", "dataset", "method", "shots", "top1"]
        curves = pd.concat(curve_means, ignore_index=True).rename(columns={"panel": "dataset"}) if curve_means else pd.DataFrame(columns=columns)
        path = self.out / "plots" / "fewshot_curves.csv"
        write_text(path, curves[columns].to_csv(index=False))
        self.written.append(path)

    # ----------------------------------------------------------- base-to-new
    def base2new(self) -> None:
        b2n = self.df[self.df["protocol"] == "base2new"]
        if b2n.empty:
            self.note("No base-to-new runs: base-to-new table skipped.")
            return
        wil = []
        for (bk, backbone), r in b2n.groupby(["backbone_key", "backbone"]):
            rows = []
            methods = self.methods(r)
            datasets = sorted(r["dataset"].unique())
            per_ds = {}
            for ds in datasets:
                for m in methods:
                    base = self.seeds(protocol="base2new", backbone_key=bk, dataset=ds, method=m, split="base")
                    new = self.seeds(protocol="base2new", backbone_key=bk, dataset=ds, method=m, split="new")
                    if base.empty and new.empty and r[(r["dataset"] == ds) & (r["method"] == m)].empty:
                        continue
                    per_ds[(ds, m)] = (base, new)
                    b, n = base.mean() if len(base) else np.nan, new.mean() if len(new) else np.nan
                    rows.append({"dataset": ds, "method": m,
                                 "Base": fmt_mean_std(b, base.std(), len(base)) + self.marks(protocol="base2new", backbone_key=bk, dataset=ds, method=m, split="base"),
                                 "New": fmt_mean_std(n, new.std(), len(new)) + self.marks(protocol="base2new", backbone_key=bk, dataset=ds, method=m, split="new"),
                                 "H": fmt_mean_std(float(stats.harmonic_mean(b, n)), np.nan, 1),
                                 "base_mean": b, "new_mean": n})
            for m in methods:
                got = [(ds, per_ds[(ds, m)]) for ds in datasets if (ds, m) in per_ds]
                b = [v[0].mean() if len(v[0]) else np.nan for _, v in got]
                n = [v[1].mean() if len(v[1]) else np.nan for _, v in got]
                ok = len(got) == len(datasets)
                bm = float(np.mean(b)) if ok and not np.isnan(b).any() else np.nan
                nm = float(np.mean(n)) if ok and not np.isnan(n).any() else np.nan
                rows.append({"dataset": "Average", "method": m, "Base": fmt_mean_std(bm, np.nan, 1),
                             "New": fmt_mean_std(nm, np.nan, 1), "H": fmt_mean_std(float(stats.harmonic_mean(bm, nm)), np.nan, 1),
                             "base_mean": bm, "new_mean": nm})
            table = pd.DataFrame(rows)
            display = table[["dataset", "method", "Base", "New", "H"]]
            self.written += write_table(display, index=False, path_stem=self.out / "tables" / f"base2new_{bk}",
                                        caption=f"Base-to-new generalization, {backbone} (H = harmonic mean; n/a: method cannot score unseen classes)",
                                        legend=self.legend())
            per = table[table["dataset"] != "Average"]
            for split, col in [("base", "base_mean"), ("new", "new_mean")]:
                means = per.pivot_table(index="dataset", columns="method", values=col)
                wil += self._wilcoxon(means, family=self.table_id("base2new", bk, 0), protocol="base2new", backbone_key=bk, split=split)
        self._write_stats(_holm_by_family(pd.DataFrame(wil)), "wilcoxon_base2new",
                          "Wilcoxon signed-rank across datasets on seed means, base-to-new (Holm within each table's family)")

    # ------------------------------------------------------------------- DG
    def dg(self) -> None:
        dg = self.summary[self.summary["protocol"] == "dg"]
        if dg.empty:
            self.note("No domain-generalization runs: DG table and bars skipped.")
            return
        for (bk, backbone, k), cells in dg.groupby(["backbone_key", "backbone", "shots"]):
            source = sorted(cells["dataset"].unique())
            targets = sorted(set(cells["eval_dataset"]) - set(source), key=paper.dg_target_order)
            order = source + targets
            methods = self.methods(cells)
            n_max = int(cells["n"].max())
            display = pd.DataFrame(index=methods, columns=order + ["Target avg"], dtype=object)
            for _, c in cells.iterrows():
                mark = self.marks(protocol="dg", backbone_key=bk, shots=k, eval_dataset=c["eval_dataset"], method=c["method"])
                display.loc[c["method"], c["eval_dataset"]] = fmt_mean_std(c["mean"], c["std"], c["n"], n_max) + mark
            per_seed = self._per_seed(protocol="dg", backbone_key=bk, shots=k)
            for m in methods:
                wide = per_seed.get(m)
                if wide is None or not targets or not set(targets) <= set(wide.columns):
                    display.loc[m, "Target avg"] = "n/a"
                    continue
                avg = wide[targets].dropna(axis=0).mean(axis=1)
                display.loc[m, "Target avg"] = fmt_mean_std(avg.mean(), avg.std(), len(avg), n_max)
            display = display.fillna("—")
            self.written += write_table(display, self.out / "tables" / f"dg_{bk}_{k}shot",
                                        caption=f"Domain generalization: trained on {', '.join(source)} ({k} shots), {backbone}",
                                        legend=self.legend())
            rows = self.df[(self.df["protocol"] == "dg") & (self.df["backbone_key"] == bk) & (self.df["shots"] == k) & self.df["top1"].notna()]
            self.written += plots.dg_bars(rows, self.out / "figures" / f"dg_{bk}_{k}shot", f"DG, {backbone}, {k} shots", methods, order)

    # ------------------------------------------------------------- efficiency
    def efficiency(self) -> None:
        cols = {"trainable_params": "trainable params", "epochs": "epochs", "train_minutes": "train time (min)",
                "peak_mem_mb": "peak GPU memory (MB)", "infer_ms_per_image": "inference (ms/image)"}
        present = [c for c in cols if c in self.df]
        cells = self.df[self.df["is_cell"]] if "is_cell" in self.df else self.df
        if cells.empty or not present:
            self.note("No efficiency fields in the runs: efficiency table skipped.")
            return
        num = cells[["protocol", "backbone", "dataset", "shots", "method"] + present].copy()
        for c in present:
            num[c] = pd.to_numeric(num[c], errors="coerce")
        eff = num.groupby(["protocol", "backbone", "dataset", "shots", "method"]).mean().reset_index()
        eff = eff.rename(columns=cols).round(3)
        self.written += write_table(eff, self.out / "tables" / "efficiency", index=False,
                                    caption="Efficiency per method (mean over seeds): trainable parameters, epochs, training time, peak GPU memory, inference time")

    # ------------------------------------------------------------ bootstrap
    def bootstrap(self) -> None:
        rows = []
        df = self.df[self.df["top1"].notna()]
        for key, r in df.groupby(KEY):
            correct = [c for _, row in r.iterrows() if (c := self.correct(row)) is not None]
            if not correct:
                continue
            low, high = stats.bootstrap_accuracy_ci([c.to_numpy() for c in correct], n_resamples=self.n_resamples)
            rows.append({**dict(zip(KEY, key)), "n_seeds": len(correct), "n_images": int(sum(len(c) for c in correct)),
                         "acc_from_predictions": 100.0 * float(np.mean([c.mean() for c in correct])),
                         "ci_low": low, "ci_high": high})
        self.boot = pd.DataFrame(rows, columns=KEY + ["n_seeds", "n_images", "acc_from_predictions", "ci_low", "ci_high"])
        if self.boot.empty:
            self.note("No predictions.parquet found: bootstrap CIs and McNemar tests skipped.")
            return
        self._write_stats(self.boot, "bootstrap_ci", "Bootstrap 95% CI over test images (percentile, seeds resampled independently) of the seed-mean top-1")

    # ------------------------------------------------------- paper vs ours
    def paper_vs_ours(self) -> None:
        pub = paper.published()
        rows = [self._match(p) for _, p in pub.iterrows()]
        out = pd.concat([pub.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
        self.written += write_table(out, self.out / "tables" / "paper_vs_ours", index=False,
                                    caption="Published numbers beside ours (ours = mean over seeds; in_ci: published inside our 95% t-interval over seeds; in_boot_ci: inside the bootstrap CI over test images)")
        matched = out["ours"].notna().sum()
        self.note(f"paper_vs_ours: {matched} of {len(out)} published numbers have a fewclip counterpart in these runs.")

    def _match(self, p: pd.Series) -> dict:
        empty = {"fewclip_method": paper.METHOD_KEYS.get(p["method"]), "ours": np.nan, "ours_std": np.nan, "n_seeds": 0,
                 "diff": np.nan, "ci_low": np.nan, "ci_high": np.nan, "in_ci": None,
                 "boot_low": np.nan, "boot_high": np.nan, "in_boot_ci": None, "note": ""}
        method = empty["fewclip_method"]
        if method is None:
            return {**empty, "note": "no fewclip method"}
        df = self.df[(self.df["method"] == method) & (self.df["backbone_norm"] == paper.norm_backbone(p["backbone"]))]
        if df.empty:
            return {**empty, "note": "not run"}
        split = "test" if p["split"] == "H" else p["split"]
        field_name = paper.METRIC_FIELDS.get(p["metric"])
        if field_name is None or field_name not in df:
            return {**empty, "note": f"metric {p['metric']} not recorded"}
        if method == "zeroshot":
            pass  # zero-shot accuracy does not depend on shots: every K matches
        else:
            df = df[df["shots"] == int(p["shots"])]
        n_avg = paper.average_size(p["dataset"])
        if p["split"] in ("base", "new", "H"):
            df = df[df["protocol"] == "base2new"]
        elif n_avg is None:
            target = paper.norm_dataset(p["dataset"])
            df = df[(df["eval_dataset_norm"] == target) & (df["split"] == split)]
            if (df["protocol"] == "fewshot").any():  # ImageNet is both a few-shot dataset and the DG source
                df = df[df["protocol"] == "fewshot"]
        else:
            want_dg = "target" in str(p["dataset"]).lower() or "ood" in str(p["dataset"]).lower()
            df = df[df["protocol"] == ("dg" if want_dg else "fewshot")]
            if want_dg:
                df = df[~df["is_cell"]]
        if method == "zeroshot" and not df.empty:
            df = df[df["shots"] == df["shots"].min()]
        if df.empty:
            return {**empty, "note": "not run"}
        per_seed = self._seed_values(df, p, field_name, n_avg)
        if isinstance(per_seed, str):
            return {**empty, "note": per_seed}
        low, high = stats.t_interval(per_seed)
        mean = float(per_seed.mean())
        value = float(p["value"])
        res = {**empty, "ours": mean, "ours_std": float(per_seed.std()) if len(per_seed) > 1 else np.nan,
               "n_seeds": int(len(per_seed)), "diff": mean - value, "ci_low": low, "ci_high": high,
               "in_ci": bool(low <= value <= high) if not np.isnan(low) else None}
        if len(per_seed) < 2:
            res["note"] = "one seed: no interval"
        elif np.allclose(per_seed, per_seed.iloc[0]):
            res["note"] = "identical on every seed: the t-interval is a point; see the bootstrap interval"
        if field_name == "top1" and n_avg is None and p["split"] != "H" and getattr(self, "boot", None) is not None and not self.boot.empty:
            b = self.boot.merge(df[KEY].drop_duplicates(), on=KEY)
            if len(b) == 1:
                res.update(boot_low=b["ci_low"].iloc[0], boot_high=b["ci_high"].iloc[0],
                           in_boot_ci=bool(b["ci_low"].iloc[0] <= value <= b["ci_high"].iloc[0]))
        return res

    def _seed_values(self, df: pd.DataFrame, p: pd.Series, field_name: str, n_avg: int | None) -> pd.Series | str:
        """Our per-seed value for one published row (a dataset, an average over datasets, or H)."""
        vals = df.assign(value=pd.to_numeric(df[field_name], errors="coerce"))
        if p["split"] in ("base", "new", "H"):
            wide = vals.pivot_table(index=["seed", "dataset"], columns="split", values="value")
            if n_avg is None:
                wide = wide[wide.index.get_level_values("dataset").map(paper.norm_dataset) == paper.norm_dataset(p["dataset"])]
            elif wide.index.get_level_values("dataset").nunique() != n_avg:
                return f"ours has {wide.index.get_level_values('dataset').nunique()}/{n_avg} datasets"
            if wide.empty:
                return "not run"
            means = wide.groupby("seed").mean()
            if p["split"] == "H":
                if not {"base", "new"} <= set(means.columns):
                    return "n/a (no base or new accuracy)"
                series = pd.Series(stats.harmonic_mean(means["base"], means["new"]), index=means.index)
            else:
                if p["split"] not in means:
                    return "not run"
                series = means[p["split"]]
        elif n_avg is not None:
            wide = vals.pivot_table(index="seed", columns="eval_dataset", values="value")
            if wide.shape[1] != n_avg:
                return f"ours has {wide.shape[1]}/{n_avg} datasets"
            series = wide.dropna(axis=0).mean(axis=1)
        else:
            series = vals.groupby("seed")["value"].mean()
        series = series.dropna()
        return series if len(series) else "n/a (top1 is null: the method cannot evaluate this split)"

    # ---------------------------------------------------------------- index
    def write_index(self) -> None:
        lines = ["# fewclip report", "", "Built by `fewclip report` from the collected runs.", "", "## Files", ""]
        for path in sorted({p.relative_to(self.out).as_posix() for p in self.written}):
            lines.append(f"- [{path}]({path})")
        lines += ["", "## Legend", "", self.legend(), "",
                  f"Wilcoxon signed-rank: with n ≤ 5 pairs an exact two-sided test cannot reach p < 0.05 "
                  f"(smallest p = 2/2ⁿ = {stats.min_exact_wilcoxon_p(5):.4g} for n = 5); such rows read \"n/a (n=… too small)\".", "",
                  "## Notes", ""]
        lines += [f"- {n}" for n in self.notes] or ["- none"]
        write_text(self.out / "README.md", "\n".join(lines) + "\n")

    def build(self) -> list[Path]:
        check_consistency(self.df)
        for sub in ("tables", "figures", "stats", "plots"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        self.pairwise()
        self.bootstrap()
        self.fewshot()
        self.base2new()
        self.dg()
        self.efficiency()
        self.paper_vs_ours()
        self.write_index()
        return self.written


def _prediction_rows(rows: pd.DataFrame) -> dict:
    """seed → {"has_predictions", "metrics_dir"} of the first row of each seed (what `correct` reads)."""
    out = {}
    for rec in rows[["seed", "has_predictions", "metrics_dir"]].to_dict("records"):
        out.setdefault(rec["seed"], rec)
    return out


def _match_images(a: pd.Series, b: pd.Series) -> pd.DataFrame:
    """Pair two runs' per-image correctness: by position when both list the same images in the same
    order, else by image path (paths listed twice are ambiguous and dropped)."""
    if len(a) == len(b) and (a.index == b.index).all():
        return pd.DataFrame({"a": a.to_numpy(), "b": b.to_numpy()})
    a = a[~a.index.duplicated(keep=False)]
    b = b[~b.index.duplicated(keep=False)]
    return pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner")


def _per_seed_text(values: pd.Series) -> str:
    """'seed1=70.12; seed2=71.03' — the per-seed values behind a mean ± std."""
    return "; ".join(f"seed{int(seed)}={value:.2f}" for seed, value in values.items())


def _holm_by_family(frame: pd.DataFrame) -> pd.DataFrame:
    """Add `p_holm`: Holm-adjusted p within each `family` (and each baseline's test type is its own column)."""
    if frame.empty:
        return frame
    frame = frame.copy()
    frame["p_holm"] = np.nan
    for _, idx in frame.groupby("family").groups.items():
        frame.loc[idx, "p_holm"] = stats.holm(frame.loc[idx, "p"].to_numpy())
    return frame


def build_report(table: pd.DataFrame, runs: Path | None, out: Path, baselines: list[str] | None = None,
                 n_resamples: int = 2000) -> list[Path]:
    """Write every table, figure and statistic under `out`; returns the written paths."""
    report = Report(table=table, runs=runs, out=out, baselines=list(baselines or DEFAULT_BASELINES), n_resamples=n_resamples)
    return report.build()
