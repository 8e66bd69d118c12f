"""Domain generalization: tables/dg_<backbone>_<K>shot (source + shifted targets + target average)
and figures/dg_<backbone>_<K>shot (bars per method)."""

from __future__ import annotations

import pandas as pd

from . import paper, plots
from .results import Results
from .significance import Marks, legend
from .tables import fmt_mean_std


def write(res: Results, marks: Marks) -> None:
    dg = res.summary[res.summary["protocol"] == "dg"]
    if dg.empty:
        res.note("No domain-generalization runs: DG table and bars skipped.")
        return
    for (bk, backbone, k), cells in dg.groupby(["backbone_key", "backbone", "shots"]):
        source = sorted(cells["dataset"].unique())
        targets = sorted(set(cells["eval_dataset"]) - set(source), key=paper.dg_target_order)
        order = source + targets
        methods = res.methods(cells)
        n_max = int(cells["n"].max())
        display = pd.DataFrame(index=methods, columns=order + ["Target avg"], dtype=object)
        for c in cells.to_dict("records"):
            mark = marks(protocol="dg", backbone_key=bk, shots=k, eval_dataset=c["eval_dataset"], method=c["method"])
            display.loc[c["method"], c["eval_dataset"]] = fmt_mean_std(c["mean"], c["std"], c["n"], n_max) + mark
        per_seed = res.per_seed(protocol="dg", backbone_key=bk, shots=k)
        for m in methods:
            wide = per_seed.get(m)
            if wide is None or not targets or not set(targets) <= set(wide.columns):
                display.loc[m, "Target avg"] = "n/a"
                continue
            avg = wide[targets].dropna(axis=0).mean(axis=1)
            display.loc[m, "Target avg"] = fmt_mean_std(avg.mean(), avg.std(), len(avg), n_max)
        display = display.fillna("—")
        res.write(display, f"tables/dg_{bk}_{k}shot", legend=legend(res.baselines),
                  caption=f"Domain generalization: trained on {', '.join(source)} ({k} shots), {backbone}")
        rows = res.where(res.scored, protocol="dg", backbone_key=bk, shots=k)
        res.figure(plots.dg_bars, res.out / "figures" / f"dg_{bk}_{k}shot", rows, f"DG, {backbone}, {k} shots", methods, order)
        res.show("dg", f"{backbone}, trained on {', '.join(source)} ({k} shots)", table=f"tables/dg_{bk}_{k}shot",
                 figure=f"figures/dg_{bk}_{k}shot")
