"""tables/base2new_<backbone>: base-class and new-class accuracy and their harmonic mean H per
dataset and averaged, with stats/wilcoxon_base2new."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import stats
from .results import Results
from .significance import Marks, holm_by_family, legend, wilcoxon_rows, write_stats
from .tables import fmt_mean_std


def write(res: Results, marks: Marks) -> None:
    b2n = res.df[res.df["protocol"] == "base2new"]
    if b2n.empty:
        res.note("No base-to-new runs: base-to-new table skipped.")
        return
    wil = []
    for (bk, backbone), r in b2n.groupby(["backbone_key", "backbone"]):
        rows = []
        methods = res.methods(r)
        datasets = sorted(r["dataset"].unique())
        present = set(zip(r["dataset"], r["method"]))
        per_ds = {}
        for ds in datasets:
            for m in methods:
                base = res.seeds(protocol="base2new", backbone_key=bk, dataset=ds, method=m, split="base")
                new = res.seeds(protocol="base2new", backbone_key=bk, dataset=ds, method=m, split="new")
                if base.empty and new.empty and (ds, m) not in present:
                    continue
                per_ds[(ds, m)] = (base, new)
                b, n = base.mean() if len(base) else np.nan, new.mean() if len(new) else np.nan
                rows.append({"dataset": ds, "method": m,
                             "Base": fmt_mean_std(b, base.std(), len(base)) + marks(protocol="base2new", backbone_key=bk, dataset=ds, method=m, split="base"),
                             "New": fmt_mean_std(n, new.std(), len(new)) + marks(protocol="base2new", backbone_key=bk, dataset=ds, method=m, split="new"),
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
        res.write(display, f"tables/base2new_{bk}", index=False,
                  caption=f"Base-to-new generalization, {backbone} (H = harmonic mean; n/a: method cannot score unseen classes)",
                  legend=legend(res.baselines))
        res.show("base2new", backbone, table=f"tables/base2new_{bk}")
        per = table[table["dataset"] != "Average"]
        for split, col in [("base", "base_mean"), ("new", "new_mean")]:
            means = per.pivot_table(index="dataset", columns="method", values=col)
            wil += wilcoxon_rows(res, means, family=res.table_id("base2new", bk, 0), protocol="base2new", backbone_key=bk, split=split)
    write_stats(res, holm_by_family(pd.DataFrame(wil)), "wilcoxon_base2new",
                "Wilcoxon signed-rank across datasets on seed means, base-to-new (Holm within each table's family)")
