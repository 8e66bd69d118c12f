"""Writing tables (CSV + Markdown + LaTeX) and formatting cells."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..io import write_text


def fmt_mean_std(mean: float, std: float, n: int, n_expected: int | None = None, digits: int = 2) -> str:
    """'71.23 ± 0.45'; 'n/a' for a missing value; '(n=2)' when fewer seeds than the table's others."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    text = f"{mean:.{digits}f}"
    if n and n > 1 and not math.isnan(std):
        text += f" ± {std:.{digits}f}"
    if n_expected and n < n_expected:
        text += f" (n={n})"
    return text


def write_table(df: pd.DataFrame, path_stem: str | Path, caption: str = "", legend: str = "", index: bool = True) -> list[Path]:
    """Write `df` as {stem}.csv, {stem}.md (caption + legend under the table) and {stem}.tex."""
    stem = Path(path_stem)
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    write_text(paths[0], df.to_csv(index=index))
    md = (f"**{caption}**\n\n" if caption else "") + df.to_markdown(index=index) + "\n"
    if legend:
        md += f"\n{legend}\n"
    write_text(paths[1], md)
    tex = df.to_latex(index=index, escape=True, caption=caption or None, label=f"tab:{stem.name}")
    if legend:
        tex += f"% {legend}\n"
    write_text(paths[2], tex)
    return paths
