"""Cross-dataset transfer (CoCoOp's Table 2): tables/cross_dataset_<backbone>_<K>shot.

A dg cell trains one model on the source (ImageNet) and evaluates it unchanged on its
cross-dataset targets, each scored with its own class names (`eval_protocol` "cross_dataset" in
their metrics.json; `results.prepare` gives those rows the protocol "cross_dataset"). One row per
method: the source accuracy (the cell itself), each target, and the average over the targets;
mean ± std over seeds with the significance marks of the other tables; n/a where the method
cannot score another dataset's classes (a class-specific head: linear probe, Tip-Adapter's cache
values, CoOp's class-specific contexts)."""

from __future__ import annotations

import pandas as pd

from ..constants import CROSS_DATASET
from . import paper
from .results import Results
from .significance import Marks, legend
from .tables import fmt_mean_std

AVERAGE = "Target avg"


def write(res: Results, marks: Marks) -> None:
    xd = res.summary[res.summary["protocol"] == CROSS_DATASET]
    if xd.empty:
        res.note("No cross-dataset runs: cross-dataset table skipped.")
        return
    for (bk, backbone, k), cells in xd.groupby(["backbone_key", "backbone", "shots"]):
        display, source = table(res, marks, bk, k, cells)
        stem = f"tables/cross_dataset_{bk}_{k}shot"
        targets = len(display.columns) - len(source) - 1
        res.write(display, stem, legend=legend(res.baselines),
                  caption=f"Cross-dataset transfer: trained on {', '.join(source)} ({k} shots), {backbone}, evaluated "
                          f"unchanged on {targets} other datasets, each with its own classes (n/a: the method "
                          "cannot score classes it was not trained on)")
        res.show(CROSS_DATASET, f"{backbone}, trained on {', '.join(source)} ({k} shots)", table=stem)


def table(res: Results, marks: Marks, bk: str, k: int, cells: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """(methods × [source..., targets..., Target avg] of formatted cells, the source datasets)."""
    source = sorted(cells["dataset"].unique())
    targets = sorted(cells["eval_dataset"].unique(), key=paper.xd_target_order)
    methods = res.methods(cells)
    s = res.summary
    src = s[(s["protocol"] == "dg") & (s["backbone_key"] == bk) & (s["shots"] == k) & s["eval_dataset"].isin(source)
            & s["method"].isin(methods)]
    n_max = int(pd.concat([cells["n"], src["n"]]).max())
    display = pd.DataFrame(index=methods, columns=source + targets + [AVERAGE], dtype=object)
    for protocol, rows in (("dg", src), (CROSS_DATASET, cells)):
        for c in rows.to_dict("records"):
            mark = marks(protocol=protocol, backbone_key=bk, shots=k, eval_dataset=c["eval_dataset"],
                         method=c["method"])
            display.loc[c["method"], c["eval_dataset"]] = fmt_mean_std(c["mean"], c["std"], c["n"], n_max) + mark
    per_seed = res.per_seed(protocol=CROSS_DATASET, backbone_key=bk, shots=k)
    for m in methods:
        wide = per_seed.get(m)
        if wide is None or not set(targets) <= set(wide.columns):
            display.loc[m, AVERAGE] = "n/a"
            continue
        avg = wide[targets].dropna(axis=0).mean(axis=1)  # the seeds with every target
        display.loc[m, AVERAGE] = fmt_mean_std(avg.mean(), avg.std(), len(avg), n_max)
    return display.fillna("—"), source
