"""Figures (seaborn/matplotlib, PNG + PDF). Every function takes the output stem first and returns the written paths
(module-level functions of picklable arguments: `results.Writers` may run them in a worker process).

One colour and one marker per method in every figure of every report (`method_style`): it depends on the
method's name only, never on which other methods a figure or grid holds, nor on the process's hash seed."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_path
from .paper import METHOD_ORDER

# Marker shapes (matplotlib codes), filled and easy to tell apart at line-plot size.
# Filled markers only: seaborn refuses a figure that mixes filled and line-art ones ("+", "x"), which
# the 16th built-in method once brought into the demo's curves. (6, 1, 0): a filled six-pointed star.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*", "d", "H", "8", (6, 1, 0))
# Colours a method outside METHOD_ORDER (a user's plugin) may get, picked by a hash of its name.
OTHER_COLOURS = 64


@functools.lru_cache(maxsize=None)
def _palettes() -> tuple[list[str], list[str]]:
    """(built-in colours, other colours) as hex strings: tab10 then tab20's light shades (20 fixed
    colours for METHOD_ORDER), and an evenly spaced HUSL wheel for any other method."""
    import seaborn as sns
    from matplotlib.colors import to_hex

    builtin = list(sns.color_palette("tab10")) + list(sns.color_palette("tab20"))[1::2]
    return [to_hex(c) for c in builtin], [to_hex(c) for c in sns.husl_palette(OTHER_COLOURS)]


@functools.lru_cache(maxsize=None)
def method_style(name: str) -> tuple[str, str]:
    """(colour as '#rrggbb', matplotlib marker) of a method, the same in every figure.

    The built-in methods, in `paper.METHOD_ORDER` (the tables' row order), take the fixed colours
    (tab10, then tab20's light shades) and MARKERS in that order, so no two built-ins share either
    (up to 20 and 15 of them). Any other name takes one of OTHER_COLOURS evenly spaced HUSL hues and a
    marker from a SHA-256 of the name (not `hash()`, whose seed changes per process): stable across
    processes and grids, though two plugins may share a colour, and a plugin's hue may be near a built-in's."""
    builtin, other = _palettes()
    if name in METHOD_ORDER:
        i = METHOD_ORDER.index(name)
        return builtin[i % len(builtin)], MARKERS[i % len(MARKERS)]
    digest = int.from_bytes(hashlib.sha256(str(name).encode("utf-8")).digest()[:8], "big")
    return other[digest % len(other)], MARKERS[(digest // len(other)) % len(MARKERS)]


def method_palette(methods) -> dict[str, str]:
    """{method: colour} for seaborn's `palette=` / scikit-posthocs' `color_palette=`."""
    return {m: method_style(m)[0] for m in methods}


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
        data=data, kind="line", x="shots", y="top1", hue="method", hue_order=methods, palette=method_palette(methods),
        style="method", style_order=methods, markers={m: method_style(m)[1] for m in methods}, dashes=False,
        col="panel", col_order=panels, col_wrap=min(4, len(panels)), errorbar="sd",
        height=2.6, aspect=1.15, facet_kws={"sharey": False},
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
    # saturation=1: the bars in the methods' own colours, not seaborn's default desaturated shades
    sns.barplot(data=data, x="eval_dataset", y="top1", hue="method", hue_order=methods, palette=method_palette(methods),
                saturation=1, order=order, errorbar="sd", ax=ax)
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
    """Critical-difference diagram (scikit-posthocs) from average ranks and Nemenyi p-values, each
    method's rank marker, elbow and label in its `method_style`."""
    plt = _pyplot()
    import scikit_posthocs as sp

    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.3 * len(ranks)))
    drawn = sp.critical_difference_diagram(ranks, pvalues, ax=ax, color_palette=method_palette(ranks.index))
    # scikit-posthocs draws every rank marker with one shape: ours, one per method, in `ranks`' order
    for marker in drawn["markers"]:
        marker.remove()
    for method, rank in ranks.items():
        colour, shape = method_style(method)
        ax.scatter(rank, 0, color=colour, marker=shape, zorder=3, label=method)
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
