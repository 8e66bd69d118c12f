"""tables/paper_vs_ours: every published number (with its source) beside ours for the same
(method, backbone, dataset, K, split): our mean over seeds, the difference, and whether the
published value lies in our 95% t-interval over seeds and in the bootstrap interval over test images."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..constants import CROSS_DATASET
from . import paper, stats
from .results import KEY, Lookup, Results

CAPTION = ("Published numbers beside ours (ours = mean over seeds; in_ci: published inside our 95% t-interval over seeds; "
           "in_boot_ci: inside the bootstrap CI over test images)")


UNRUN = ("not run", "no fewclip method")


def write(res: Results) -> None:
    """paper_vs_ours: the published rows we have runs for (numbers first), then one line per paper
    counting its published rows with no run of ours; paper_vs_ours_all.csv: every published row."""
    pub = paper.published()
    by_method = Lookup(res.df)
    rows = [_match(res, by_method, p) for p in pub.to_dict("records")]
    full = pd.concat([pub.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
    res.write_csv(full, "tables/paper_vs_ours_all")
    res.paper_vs_ours = full
    res.write(readable(full), "tables/paper_vs_ours", index=False, caption=CAPTION + LAST_LINES)
    matched = full["ours"].notna().sum()
    res.note(f"paper_vs_ours: {matched} of {len(full)} published numbers have a fewclip counterpart in these runs "
             "(every published row with its match or note: tables/paper_vs_ours_all.csv).")


LAST_LINES = "; the last lines count, per paper, the published rows with no run of ours"


def readable(full: pd.DataFrame) -> pd.DataFrame:
    """Rows with a run of ours, those with a number first (published order within each), then one
    line per paper: how many of its published rows have no run of ours (and why)."""
    ran = full[~full["note"].isin(UNRUN)]
    ran = pd.concat([ran[ran["ours"].notna()], ran[ran["ours"].isna()]])
    lines = []
    for name, rows in full[full["note"].isin(UNRUN)].groupby("paper", sort=False):
        counts = rows["note"].value_counts()
        why = ", ".join(f"{counts[n]} {n}" for n in UNRUN if n in counts)
        lines.append({"paper": name, "n_seeds": 0,
                      "note": f"{len(rows)} of {int((full['paper'] == name).sum())} published rows with no run of ours ({why})"})
    tail = pd.DataFrame(lines, columns=full.columns)
    out = pd.concat([ran, tail], ignore_index=True) if len(tail) else ran.reset_index(drop=True)
    return out.astype(object).where(out.notna(), None)  # empty cells, not "nan", in the Markdown


def _match(res: Results, by_method: Lookup, p: dict) -> dict:
    empty = {"fewclip_method": paper.METHOD_KEYS.get(p["method"]), "ours": np.nan, "ours_std": np.nan, "n_seeds": 0,
             "diff": np.nan, "ci_low": np.nan, "ci_high": np.nan, "in_ci": None,
             "boot_low": np.nan, "boot_high": np.nan, "in_boot_ci": None, "note": ""}
    method = empty["fewclip_method"]
    if method is None:
        return {**empty, "note": "no fewclip method"}
    df = by_method(method=method, backbone_norm=paper.norm_backbone(p["backbone"]))
    if df.empty:
        return {**empty, "note": "not run"}
    split = "test" if p["split"] == "H" else p["split"]
    field_name = paper.METRIC_FIELDS.get(p["metric"])
    if field_name is None or field_name not in df:
        return {**empty, "note": f"metric {p['metric']} not recorded"}
    if method != "zeroshot":  # zero-shot accuracy does not depend on shots: every K matches
        df = df[df["shots"] == int(p["shots"])]
    n_avg = paper.average_size(p["dataset"])
    if p["split"] in ("base", "new", "H"):
        df = df[df["protocol"] == "base2new"]
    elif n_avg is None:
        target = paper.norm_dataset(p["dataset"])
        df = df[(df["eval_dataset_norm"] == target) & (df["split"] == split)]
        if paper.is_cross_dataset(p):  # a target: the ImageNet model's transfer, never a few-shot run on it;
            xd = df[df["protocol"] == CROSS_DATASET]  # the source: that model's own (dg) cell
            df = xd if not xd.empty else df[df["protocol"] == "dg"]
        else:  # a transfer result never stands in for a few-shot or DG number
            df = df[df["protocol"] != CROSS_DATASET]
            if (df["protocol"] == "fewshot").any():  # ImageNet is both a few-shot dataset and the DG source
                df = df[df["protocol"] == "fewshot"]
    else:
        want_dg = "target" in str(p["dataset"]).lower() or "ood" in str(p["dataset"]).lower()
        df = df[df["protocol"] == (CROSS_DATASET if paper.is_cross_dataset(p) else "dg" if want_dg else "fewshot")]
        if want_dg:
            df = df[~df["is_cell"]]
    if method == "zeroshot" and not df.empty:
        df = df[df["shots"] == df["shots"].min()]
    if df.empty:
        return {**empty, "note": "not run"}
    per_seed = _seed_values(df, p, field_name, n_avg)
    if isinstance(per_seed, str):
        return {**empty, "note": per_seed}
    low, high = stats.t_interval(per_seed)
    mean = float(per_seed.mean())
    value = float(p["value"])
    out = {**empty, "ours": mean, "ours_std": float(per_seed.std()) if len(per_seed) > 1 else np.nan,
           "n_seeds": int(len(per_seed)), "diff": mean - value, "ci_low": low, "ci_high": high,
           "in_ci": bool(low <= value <= high) if not np.isnan(low) else None}
    if len(per_seed) < 2:
        out["note"] = "one seed: no interval"
    elif np.allclose(per_seed, per_seed.iloc[0]):
        out["note"] = "identical on every seed: the t-interval is a point; see the bootstrap interval"
    if field_name == "top1" and n_avg is None and p["split"] != "H" and not res.boot.empty:
        b = res.boot.merge(df[KEY].drop_duplicates(), on=KEY)
        if len(b) == 1:
            out.update(boot_low=b["ci_low"].iloc[0], boot_high=b["ci_high"].iloc[0],
                       in_boot_ci=bool(b["ci_low"].iloc[0] <= value <= b["ci_high"].iloc[0]))
    return out


def _seed_values(df: pd.DataFrame, p: dict, field_name: str, n_avg: int | None) -> pd.Series | str:
    """Our per-seed value for one published row (a dataset, an average over datasets, or H)."""
    vals = df.assign(value=pd.to_numeric(df[field_name], errors="coerce"))
    if p["split"] in ("base", "new", "H"):
        wide = vals.pivot_table(index=["seed", "dataset"], columns="split", values="value")
        if n_avg is None:
            wide = wide[wide.index.get_level_values("dataset").map(paper.norm_dataset) == paper.norm_dataset(p["dataset"])]
        elif wide.index.get_level_values("dataset").nunique() != n_avg:
            return f"ours has {wide.index.get_level_values('dataset').nunique()}/{n_avg} datasets"
        if wide.empty:
            return "not run"
        means = wide.groupby("seed").mean()
        if p["split"] == "H":
            if not {"base", "new"} <= set(means.columns):
                return "n/a (no base or new accuracy)"
            series = pd.Series(stats.harmonic_mean(means["base"], means["new"]), index=means.index)
        else:
            if p["split"] not in means:
                return "not run"
            series = means[p["split"]]
    elif n_avg is not None:
        wide = vals.pivot_table(index="seed", columns="eval_dataset", values="value")
        if wide.shape[1] != n_avg:
            return f"ours has {wide.shape[1]}/{n_avg} datasets"
        series = wide.dropna(axis=0).mean(axis=1)
    else:
        series = vals.groupby("seed")["value"].mean()
    series = series.dropna()
    return series if len(series) else "n/a (top1 is null: the method cannot evaluate this split)"
