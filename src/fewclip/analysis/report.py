"""Assemble reports/: tables/, figures/, stats/, plots/ (DVC plot data) and README.md.

Every output is built from the collected table (one row per metrics.json) and, for the
per-image statistics, the runs' predictions.parquet. Partial grids are fine: an output with
no data is skipped and the skip is listed under "Notes" in reports/README.md.

One module per artifact, each taking the prepared `Results`: `significance` (tests and
bootstrap, run first: the tables print its marks), `fewshot`, `base2new`, `dg`, `cross_dataset`,
`efficiency`, `paper_vs_ours`, and `index` (README.md) last.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pandas as pd

from . import base2new, cross_dataset, dg, efficiency, fewshot, index, paper_vs_ours, significance
from .collect import check_consistency
from .predictions import Predictions
from .results import DEFAULT_BASELINES, Results, Writers

# Below this many scored rows (the demo, the tests) starting worker processes costs more than it saves.
FIGURE_POOL_MIN_ROWS = 1000

__all__ = ["DEFAULT_BASELINES", "build_report"]


def build_report(table: pd.DataFrame, runs: Path | None, out: Path, baselines: list[str] | None = None,
                 n_resamples: int = 2000, workers: int | None = None) -> list[Path]:
    """Write every table, figure and statistic under `out`; returns the written paths.

    `workers`: processes writing the figures and tables meanwhile (0: all here, one after
    another); by default one per CPU, up to 2, for grids of at least FIGURE_POOL_MIN_ROWS scored rows."""
    res = Results(table=table, runs=runs, out=Path(out), baselines=list(baselines or DEFAULT_BASELINES), n_resamples=n_resamples)
    check_consistency(res.df)
    preds = Predictions(runs)
    if runs is not None and {"metrics_dir", "has_predictions"} <= set(res.scored.columns):
        # every predictions.parquet is read before anything is written: a corrupt one fails here
        preds.load(res.scored.loc[res.scored["has_predictions"].astype(bool), "metrics_dir"])
    if workers is None:
        forks = "fork" in multiprocessing.get_all_start_methods()
        workers = min(2, os.cpu_count() or 1) if forks and len(res.scored) >= FIGURE_POOL_MIN_ROWS else 0
    res.writers = Writers(workers)
    for sub in ("tables", "figures", "stats", "plots"):
        (res.out / sub).mkdir(parents=True, exist_ok=True)
    try:
        _build(res, preds)
    except BaseException:
        res.writers.shutdown()
        raise
    res.writers.wait()
    index.write(res)  # last, once every file is written: it lists them and copies tables in
    return res.written


def _build(res: Results, preds: Predictions) -> None:
    significance.pairwise(res, preds)
    significance.bootstrap(res, preds)
    marks = significance.Marks(res.ttests, res.baselines)  # the tables print them
    fewshot.write(res, marks)
    base2new.write(res, marks)
    dg.write(res, marks)
    cross_dataset.write(res, marks)
    efficiency.write(res)
    paper_vs_ours.write(res)
