"""reports/README.md: the page a researcher reads first.

Results in the order of a paper's results section: few-shot tables per shot count with the
1–16-shot curves, the backbone × method summary (several backbones), base-to-new, domain generalization, cross-dataset transfer, efficiency, a
summary of the significance tests, paper-vs-ours, then the legend, notes and the index of every file. Tables are copied in
from their .md files; every link is relative to reports/, so it works on GitHub and in the
folder `dvc repro` writes.
"""

from __future__ import annotations

import pandas as pd

from ..constants import CROSS_DATASET
from ..io import write_text
from . import efficiency, stats
from .results import Results
from .significance import legend


def write(res: Results) -> None:
    n_cells = int(res.df["is_cell"].sum()) if "is_cell" in res.df else len(res.df)
    lines = ["# fewclip report", "",
             f"Built by `fewclip report` from {n_cells} runs ({len(res.df)} evaluations). Accuracy is top-1 (%), "
             "mean ± std over seeds; the marks are explained under [Legend](#legend), and every file is listed "
             "under [Files](#files).", ""]
    lines += _fewshot(res) + _section(res, "backbones", "Backbones side by side")
    lines += _section(res, "base2new", "Base-to-new generalization") + _section(res, "dg", "Domain generalization")
    lines += _section(res, CROSS_DATASET, "Cross-dataset transfer")
    lines += _efficiency(res) + _significance(res) + _paper(res)
    lines += ["## Legend", "", legend(res.baselines), "",
              f"Wilcoxon signed-rank: with n ≤ 5 pairs an exact two-sided test cannot reach p < 0.05 "
              f"(smallest p = 2/2ⁿ = {stats.min_exact_wilcoxon_p(5):.4g} for n = 5); such rows read \"n/a (n=… too small)\".", "",
              "## Notes", ""]
    lines += [f"- {n}" for n in res.notes] or ["- none"]
    lines += ["", "## Files", ""]
    for path in sorted({p.relative_to(res.out).as_posix() for p in res.written} | {"README.md"}):
        lines.append(f"- [{path}]({path})")
    write_text(res.out / "README.md", "\n".join(lines) + "\n")


def _table(res: Results, stem: str) -> list[str]:
    """The table of tables/<stem>.md without its caption and legend, and a link to its files."""
    text = (res.out / f"{stem}.md").read_text()
    body = [line for line in text.splitlines() if line.startswith("|")]
    return body + ["", f"([{stem}.md]({stem}.md) · [csv]({stem}.csv) · [tex]({stem}.tex))", ""]


def _figure(stem: str, title: str) -> list[str]:
    return [f"![{title}]({stem}.png)", "", f"([{stem}.pdf]({stem}.pdf))", ""]


def _fewshot(res: Results) -> list[str]:
    backbones = [k.split(":", 1)[1] for k in res.toc if k.startswith("fewshot:")]
    if not backbones:
        return []
    lines = ["## Few-shot classification", ""]
    curves = {c["figure"]: c for c in res.toc.get("fewshot_curves", [])}
    for bk in backbones:
        figure = f"figures/fewshot_curves_{bk}"
        if figure in curves:
            lines += [f"### {curves[figure]['title']}", ""] + _figure(figure, curves[figure]["title"])
        for item in res.toc[f"fewshot:{bk}"]:
            lines += [f"### {item['title']}", ""] + _table(res, item["table"])
    return lines


def _section(res: Results, kind: str, heading: str) -> list[str]:
    items = res.toc.get(kind, [])
    if not items:
        return []
    lines = [f"## {heading}", ""]
    for item in items:
        lines += [f"### {item['title']}", ""] + _table(res, item["table"])
        if item["figure"]:
            lines += _figure(item["figure"], item["title"])
    return lines


def _efficiency(res: Results) -> list[str]:
    table = efficiency.summary(res)
    if table.empty:
        return []
    what = efficiency.CAPTION.split(": ", 1)[1]
    return ["## Efficiency", "",
            "Median over each method's cells (datasets and shot counts); per cell in "
            f"[tables/efficiency.md](tables/efficiency.md). {what[0].upper()}{what[1:]}.", "",
            table.to_markdown(index=False, missingval="—"), ""]


def _significance(res: Results) -> list[str]:
    """Per table (family) and baseline: cells tested, and how many are significantly better or worse (Holm p < 0.05)."""
    lines = []
    tt = res.ttests
    if not tt.empty:
        sig = tt["p_holm"] < stats.ALPHA
        summary = (tt.assign(tested=tt["p"].notna(), better=sig & (tt["mean_diff"] > 0), worse=sig & (tt["mean_diff"] < 0))
                   .groupby(["family", "baseline"], sort=False)[["tested", "better", "worse"]].sum().reset_index())
        lines += ["Paired t-test over seeds, each method's cells against each baseline: how many cells were tested "
                  "and how many are significantly better or worse (Holm-adjusted within the table, p < 0.05); "
                  "per cell in [stats/ttest_vs_baselines.md](stats/ttest_vs_baselines.md).", "",
                  summary.rename(columns={"family": "table", "tested": "cells tested", "better": "better",
                                          "worse": "worse"}).to_markdown(index=False), ""]
    mc = getattr(res, "mcnemar", pd.DataFrame())
    if not mc.empty:
        sig = mc["p_holm"] < stats.ALPHA
        summary = (mc.assign(better=sig & (mc["a_only"] > mc["b_only"]), worse=sig & (mc["a_only"] < mc["b_only"]))
                   .groupby(["family", "baseline"], sort=False).agg(pairs=("p", "size"), better=("better", "sum"),
                                                                    worse=("worse", "sum")).reset_index())
        lines += ["Exact McNemar test on the per-image predictions of matched seeds (one test per cell and seed); "
                  "per test in [stats/mcnemar_vs_baselines.md](stats/mcnemar_vs_baselines.md).", "",
                  summary.rename(columns={"family": "table", "pairs": "seed pairs tested"}).to_markdown(index=False), ""]
    if (res.out / "stats" / "friedman.csv").is_file():
        lines += ["Friedman test over methods with datasets as blocks, and the critical-difference diagrams: "
                  "[stats/friedman.md](stats/friedman.md), figures/cd_fewshot_*.png.", ""]
    return ["## Significance", ""] + lines if lines else []


def _paper(res: Results) -> list[str]:
    full = getattr(res, "paper_vs_ours", None)
    if full is None:
        return []
    matched = int(full["ours"].notna().sum())
    return ["## Paper vs ours", "",
            f"{matched} of {len(full)} published numbers have a counterpart in these runs: "
            "[tables/paper_vs_ours.md](tables/paper_vs_ours.md) (matched rows first, then per paper the rows "
            "with no run of ours); every published row in [tables/paper_vs_ours_all.csv](tables/paper_vs_ours_all.csv).", ""]
