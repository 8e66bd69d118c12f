"""tables/efficiency: trainable parameters, epochs, training time, peak memory and inference time per method."""

from __future__ import annotations

import pandas as pd

from .results import Results

COLUMNS = {"trainable_params": "trainable params", "epochs": "epochs", "train_minutes": "train time (min)",
           "peak_mem_mb": "peak GPU memory (MB)", "infer_ms_per_image": "inference (ms/image)"}


def write(res: Results) -> None:
    df = res.df
    present = [c for c in COLUMNS if c in df]
    cells = df[df["is_cell"]] if "is_cell" in df else df
    if cells.empty or not present:
        res.note("No efficiency fields in the runs: efficiency table skipped.")
        return
    num = cells[["protocol", "backbone", "dataset", "shots", "method"] + present].copy()
    for c in present:
        num[c] = pd.to_numeric(num[c], errors="coerce")
    eff = num.groupby(["protocol", "backbone", "dataset", "shots", "method"]).mean().reset_index()
    eff = eff.rename(columns=COLUMNS).round(3)
    res.write(eff, "tables/efficiency", index=False,
              caption="Efficiency per method (mean over seeds): trainable parameters, epochs, training time, peak GPU memory, inference time")
