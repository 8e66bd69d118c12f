"""tables/efficiency: trainable parameters, epochs, training time, peak memory and inference time per method.

Peak memory is what the run measured (metrics.json `peak_mem_mb`, engine/run.py): the CUDA
allocator's peak on a GPU run, the process's peak resident set size on a CPU run. They are
different quantities, so they get different columns, chosen by `provenance.device`."""

from __future__ import annotations

import pandas as pd

from .results import Results

GROUP = ["protocol", "backbone", "dataset", "shots", "method"]
COLUMNS = {"trainable_params": "trainable params", "epochs": "epochs", "train_minutes": "train time (min)",
           "peak_gpu_mb": "peak GPU memory (MB)", "peak_rss_mb": "peak RSS (MB, CPU run)",
           "peak_unknown_mb": "peak memory (MB, device not recorded)", "infer_ms_per_image": "inference (ms/image)"}
CAPTION = ("Efficiency per method (mean over seeds): trainable parameters, epochs, training time, peak memory "
           "(GPU runs: CUDA peak allocated; CPU runs: peak resident set size of the process), inference time")


def split_memory(df: pd.DataFrame) -> pd.DataFrame:
    """peak_mem_mb → peak_gpu_mb (GPU runs), peak_rss_mb (CPU runs), peak_unknown_mb (no device recorded)."""
    df = df.copy()
    if "peak_mem_mb" not in df:
        return df
    mem = pd.to_numeric(df["peak_mem_mb"], errors="coerce")
    device = df["provenance.device"] if "provenance.device" in df else pd.Series(None, index=df.index, dtype=object)
    known = device.notna().to_numpy()
    cpu = device.astype(str).str.lower().str.startswith("cpu").to_numpy() & known
    df["peak_gpu_mb"] = mem.where(known & ~cpu)
    df["peak_rss_mb"] = mem.where(cpu)
    if (~known & mem.notna().to_numpy()).any():
        df["peak_unknown_mb"] = mem.where(~known)
    return df


def write(res: Results) -> None:
    df = split_memory(res.df)
    present = [c for c in COLUMNS if c in df]
    cells = df[df["is_cell"]] if "is_cell" in df else df
    if cells.empty or not present:
        res.note("No efficiency fields in the runs: efficiency table skipped.")
        return
    num = cells[GROUP + present].copy()
    for c in present:
        num[c] = pd.to_numeric(num[c], errors="coerce").astype(float)
    eff = num.groupby(GROUP).mean().reset_index()
    res.efficiency = eff
    eff = eff.rename(columns=COLUMNS).round(3)
    res.write(eff, "tables/efficiency", index=False, caption=CAPTION)


def summary(res: Results) -> pd.DataFrame:
    """Per protocol, backbone and method: the median over its cells (for reports/README.md)."""
    eff = getattr(res, "efficiency", None)
    if eff is None or eff.empty:
        return pd.DataFrame()
    cols = [c for c in COLUMNS if c in eff and eff[c].notna().any()]
    out = eff.groupby(["protocol", "backbone", "method"], sort=False)[cols].median().reset_index()
    out = out.rename(columns=COLUMNS).round(3)
    return out.astype(object).where(out.notna(), None)
