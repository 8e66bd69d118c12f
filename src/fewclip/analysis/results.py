"""The collected table, prepared once for every report artifact (tables, figures, statistics).

`Results` holds the table with the columns the artifacts read (backbone, eval_dataset, split,
train_minutes, …), the seed summary per table cell, where outputs go, the notes for
reports/README.md and the list of written files. Each artifact module (`fewshot`, `base2new`,
`dg`, `cross_dataset`, `efficiency`, `paper_vs_ours`, `significance`, `index`) takes a `Results` and
writes its files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..constants import CROSS_DATASET
from . import paper
from .tables import write_table

KEY = ["protocol", "backbone_key", "backbone", "shots", "dataset", "eval_dataset", "split", "method"]
BASELINE_KEY = ["protocol", "backbone_key", "dataset", "eval_dataset", "split"]  # a baseline may differ in shots
DEFAULT_BASELINES = ["zeroshot", "coop"]


# The collected table's columns the report reads; the others (hparams.*, selected.*, most of
# provenance.*) only make every row selection slower.
COLUMNS = ["protocol", "backbone_key", "dataset", "method", "shots", "seed", "preset", "backbone", "pretrained",
           "eval_dataset", "eval_split", "eval_protocol", "top1", "n_test", "trainable_params", "epochs",
           "train_seconds", "eval_seconds", "peak_mem_mb", "provenance.device", "provenance.manifest_sha256", "is_cell",
           "metrics_dir", "has_predictions"]


def prepare(table: pd.DataFrame) -> pd.DataFrame:
    """The collected table's COLUMNS with every column the report reads (missing ones filled in).

    A dg cell's evaluations on other datasets (`eval_protocol` "cross_dataset") get the protocol
    "cross_dataset" here: they form their own table (CoCoOp's Table 2), family of tests and
    baseline pairs, apart from the DG targets; the cell itself (the source accuracy) stays "dg"."""
    df = table[[c for c in COLUMNS if c in table]].copy()
    if "eval_protocol" in df:
        df.loc[(df["eval_protocol"] == CROSS_DATASET).to_numpy(), "protocol"] = CROSS_DATASET
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
    return df


@dataclass
class Results:
    table: pd.DataFrame
    runs: Path | None
    out: Path
    baselines: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))
    n_resamples: int = 2000
    notes: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    writers: "Writers | None" = None

    def __post_init__(self):
        self.writers = self.writers or Writers(workers=0)
        self.df = prepare(self.table)
        self.summary = self.df.groupby(KEY, dropna=False)["top1"].agg(mean="mean", std="std", n="count").reset_index()
        self.scored = self.df[self.df["top1"].notna()]
        self.ttests = pd.DataFrame()  # filled by significance.pairwise; the tables' marks read it
        self.boot = pd.DataFrame()  # filled by significance.bootstrap; paper_vs_ours reads it
        self._lookup = Lookup(self.scored)
        # what reports/README.md shows, in order: kind → [{"title", "table": rel stem, "figure": rel stem}]
        self.toc: dict[str, list[dict]] = {}

    # ----------------------------------------------------------------- lookups
    def where(self, frame: pd.DataFrame | None = None, **cond) -> pd.DataFrame:
        frame = self.df if frame is None else frame
        mask = np.ones(len(frame), dtype=bool)
        for k, v in cond.items():
            mask &= (frame[k] == v).to_numpy()
        return frame[mask]

    def seeds(self, **where) -> pd.Series:
        """top1 per seed for the rows matching `where` (NaN top1 dropped)."""
        return self._lookup(**where).groupby("seed")["top1"].mean()

    def per_seed(self, **where) -> dict[str, pd.DataFrame]:
        """method → DataFrame seeds × eval datasets of top1, for rows matching `where`."""
        rows = self.where(self.scored, **where)
        return {m: r.pivot_table(index="seed", columns="eval_dataset", values="top1") for m, r in rows.groupby("method")}

    @staticmethod
    def methods(frame: pd.DataFrame) -> list[str]:
        return paper.method_order(frame["method"].unique())

    @staticmethod
    def table_id(protocol: str, backbone_key: str, shots: int) -> str:
        return f"{protocol}_{backbone_key}" if protocol == "base2new" else f"{protocol}_{backbone_key}_{shots}shot"

    # ----------------------------------------------------------------- output
    def show(self, kind: str, title: str, table: str | None = None, figure: str | None = None) -> None:
        """List an artifact for reports/README.md (`table`/`figure`: paths under out, no suffix)."""
        self.toc.setdefault(kind, []).append({"title": title, "table": table, "figure": figure})

    def note(self, text: str) -> None:
        self.notes.append(text)

    def write(self, frame: pd.DataFrame, rel: str, caption: str = "", legend: str = "", index: bool = True) -> list[Path]:
        """write_table under `out` (rel = 'tables/name'), recorded for the index; in a worker process
        when there are workers (formatting Markdown and LaTeX is slow), finished by `writers.wait()`."""
        stem = self.out / rel
        paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
        self.writers.submit(write_table, paths, frame, stem, caption, legend, index)
        self.written += paths
        return paths

    def write_csv(self, frame: pd.DataFrame, rel: str) -> Path:
        """Only a CSV (data for scripts, too long to read as a table)."""
        from ..io import write_text

        path = (self.out / rel).with_suffix(".csv")
        write_text(path, frame.to_csv(index=False))
        self.written.append(path)
        return path

    def wrote(self, paths: list[Path]) -> list[Path]:
        self.written += paths
        return paths

    def figure(self, draw, stem: Path, *args) -> None:
        """Draw one figure (a `plots` function) to stem.png/.pdf, now or in a worker process."""
        paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
        self.writers.submit(draw, paths, stem, *args)
        self.written += paths


class Writers:
    """Where figures and tables are written: in this process (workers=0), or in worker
    processes while the statistics go on here. matplotlib and the Markdown/LaTeX formatters spend
    most of a large report's time; each file is independent and written by the same code, so the
    bytes are the same either way (tests/test_report_reader.py)."""

    def __init__(self, workers: int = 0):
        self.workers = workers
        self._pool = None
        self._futures = []

    def submit(self, work, paths: list[Path], *args) -> list[Path]:
        """Run work(*args), which writes `paths`, here or in a worker; returns `paths`."""
        if self.workers <= 0:
            work(*args)
            return paths
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork: the worker starts with this process's imports (spawn would re-import the caller's
            # __main__); Arrow's thread pools reinitialise themselves in a forked child.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
        self._futures.append(self._pool.submit(work, *args))
        return paths

    def wait(self) -> None:
        """Block until every figure is written; a failed figure raises here."""
        if self._pool is None:
            return
        try:
            for f in self._futures:
                f.result()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        self._pool, self._futures = None, []


class Lookup:
    """Rows of `frame` equal to given column values, through one groupby per set of columns
    (a boolean mask over the whole table per query is what made the report slow)."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self._groups: dict[tuple[str, ...], dict] = {}

    def __call__(self, **cond) -> pd.DataFrame:
        cols = tuple(sorted(cond))
        if not cols:
            return self.frame
        if cols not in self._groups:
            self._groups[cols] = {k if isinstance(k, tuple) else (k,): g for k, g in self.frame.groupby(list(cols), sort=False)}
        return self._groups[cols].get(tuple(cond[c] for c in cols), self.frame.iloc[:0])


def per_seed_text(values: pd.Series) -> str:
    """'seed1=70.12; seed2=71.03' — the per-seed values behind a mean ± std."""
    return "; ".join(f"seed{int(seed)}={value:.2f}" for seed, value in values.items())
