"""Figures (seaborn/matplotlib, PNG + PDF). Every function takes the output stem first and returns the written paths
(module-level functions of picklable arguments: `results.Writers` may run them in a worker process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_path


def _save(fig, stem: Path) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        with atomic_path(path) as tmp:
            # Fixed metadata keeps the files byte-stable between identical rebuilds.
            meta = {"CreationDate": None} if ext == "pdf" else {"Software": None}
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=meta)
        paths.append(path)
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def shot_curves(stem: Path, data: pd.DataFrame, title: str, methods: list[str], panels: list[str]) -> list[Path]:
    """One panel per dataset (+ Average), log2 shots, one line per method, ±1 std band over seeds.

    `data` columns: panel, method, shots, seed, top1.
    """
    plt = _pyplot()
    import seaborn as sns

    grid = sns.relplot(
        data=data, kind="line", x="shots", y="top1", hue="method", hue_order=methods,
        col="panel", col_order=panels, col_wrap=min(4, len(panels)), errorbar="sd",
        marker="o", height=2.6, aspect=1.15, facet_kws={"sharey": False},
    )
    shots = sorted(data["shots"].unique())
    for ax in grid.axes.flat:
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.minorticks_off()
    grid.set_titles("{col_name}")
    grid.set_axis_labels("shots per class", "top-1 accuracy (%)")
    grid.figure.suptitle(title, y=1.02)
    paths = _save(grid.figure, stem)
    plt.close(grid.figure)
    return paths


def dg_bars(stem: Path, data: pd.DataFrame, title: str, methods: list[str], order: list[str]) -> list[Path]:
    """Grouped bars: source and target datasets on x, one bar per method, error bar = std over seeds."""
    plt = _pyplot()
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(order), 3.6))
    sns.barplot(data=data, x="eval_dataset", y="top1", hue="method", hue_order=methods, order=order, errorbar="sd", ax=ax)
    ax.set_xlabel("")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    # dataset names are longer than a bar group is wide ("demo_shapes_sketch"): slant them
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
    ax.legend(title="method", fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    paths = _save(fig, stem)
    plt.close(fig)
    return paths


def cd_diagram(stem: Path, ranks: pd.Series, pvalues: pd.DataFrame, title: str) -> list[Path]:
    """Critical-difference diagram (scikit-posthocs) from average ranks and Nemenyi p-values."""
    plt = _pyplot()
    import scikit_posthocs as sp

    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.3 * len(ranks)))
    drawn = sp.critical_difference_diagram(ranks, pvalues, ax=ax)
    # scikit-posthocs draws each crossbar through a set of methods in the set's order, which follows
    # the process's string hash seed; the same line drawn left to right keeps the files byte-stable
    for lines in drawn["crossbars"]:
        for line in lines:
            x, y = (np.asarray(v) for v in line.get_data())
            order = np.argsort(x, kind="stable")
            line.set_data(x[order], y[order])
    ax.set_title(title)
    paths = _save(fig, stem)
    plt.close(fig)
    return paths
