"""`fewclip report` on a synthetic grid: every table and figure, cell values equal the run files."""

import json

import numpy as np
import pandas as pd
import pytest
from test_analysis_fixtures import grid_config, make_runs

from fewclip.analysis.paper import published
from fewclip.cli import main


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    runs = make_runs(root)
    table = root / "results" / "all_runs.parquet"
    assert main(["collect", "--runs", str(runs), "--out", str(table)]) == 0
    out = root / "reports"
    assert main(["report", "--table", str(table), "--runs", str(runs), "--out", str(out), "--n-resamples", "200"]) == 0
    return runs, out


def test_every_output_written(built):
    _, out = built
    tables = ["fewshot_rn50_1shot", "fewshot_rn50_2shot", "fewshot_rn50_4shot", "base2new_vitb16", "dg_vitb16_16shot",
              "efficiency", "paper_vs_ours"]
    assert (out / "tables" / "paper_vs_ours_all.csv").is_file()
    for name in tables:
        for ext in ("csv", "md", "tex"):
            assert (out / "tables" / f"{name}.{ext}").stat().st_size > 0, name
    for name in ["fewshot_curves_rn50", "dg_vitb16_16shot", "cd_fewshot_rn50_4shot"]:
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 0, name
    for name in ["ttest_vs_baselines", "mcnemar_vs_baselines", "wilcoxon_across_datasets", "friedman", "bootstrap_ci"]:
        assert (out / "stats" / f"{name}.csv").is_file(), name
    assert (out / "plots" / "fewshot_curves.csv").is_file()
    assert "Marks:" in (out / "README.md").read_text()


def test_fewshot_cells_equal_run_files(built):
    runs, out = built
    long = pd.read_csv(out / "tables" / "fewshot_rn50_2shot_long.csv")
    display = pd.read_csv(out / "tables" / "fewshot_rn50_2shot.csv", index_col=0)
    for method in ["zeroshot", "coop", "tip_adapter"]:
        per_ds = {}
        for ds in ["imagenet", "dtd", "eurosat"]:
            vals = [json.loads((runs / f"fewshot/rn50/{ds}/{method}/2shot/seed{s}/metrics.json").read_text())["top1"] for s in (1, 2, 3)]
            per_ds[ds] = vals
            row = long[(long["method"] == method) & (long["dataset"] == ds)].iloc[0]
            assert row["mean"] == pytest.approx(np.mean(vals))
            assert row["std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-9)
            assert display.loc[method, ds].startswith(f"{np.mean(vals):.2f}")
            assert row["per_seed"] == "; ".join(f"seed{s}={v:.2f}" for s, v in zip((1, 2, 3), vals))
        avg = np.mean([per_ds[d] for d in per_ds], axis=0)
        assert display.loc[method, "Average"].startswith(f"{avg.mean():.2f} ± {avg.std(ddof=1):.2f}")


def test_base2new_na_and_harmonic_mean(built):
    _, out = built
    t = pd.read_csv(out / "tables" / "base2new_vitb16.csv", index_col=[0, 1], keep_default_na=False)
    assert t.loc[("dtd", "linear_probe"), "New"] == "n/a"
    assert t.loc[("dtd", "linear_probe"), "H"] == "n/a"
    b = float(t.loc[("dtd", "coop"), "Base"].split()[0])
    n = float(t.loc[("dtd", "coop"), "New"].split()[0])
    assert float(t.loc[("dtd", "coop"), "H"]) == pytest.approx(2 * b * n / (b + n), abs=0.01)


def test_stats_outputs(built):
    _, out = built
    tt = pd.read_csv(out / "stats" / "ttest_vs_baselines.csv")
    assert set(tt["baseline"]) == {"zeroshot", "coop"}
    assert (tt["p_holm"].dropna() >= tt["p"].dropna().loc[tt["p_holm"].dropna().index] - 1e-12).all()
    wil = pd.read_csv(out / "stats" / "wilcoxon_across_datasets.csv")
    assert wil["note"].str.contains("too small").all()  # 3 datasets: an exact test cannot reach p < 0.05
    mc = pd.read_csv(out / "stats" / "mcnemar_vs_baselines.csv")
    assert (mc["n_images"] == 60).all()
    boot = pd.read_csv(out / "stats" / "bootstrap_ci.csv")
    assert ((boot["ci_low"] <= boot["acc_from_predictions"]) & (boot["acc_from_predictions"] <= boot["ci_high"])).all()


def test_paper_vs_ours_has_every_published_row(built):
    _, out = built
    pvo = pd.read_csv(out / "tables" / "paper_vs_ours_all.csv")
    pub = published()
    assert len(pvo) == len(pub)
    assert (pvo["value"] == pub["value"]).all() and (pvo["source"] == pub["source"]).all()
    row = pvo[(pvo["method"] == "Tip-Adapter") & (pvo["dataset"] == "ImageNet") & (pvo["shots"] == 2)
              & (pvo["backbone"] == "RN50") & (pvo["metric"] == "top1_acc")].iloc[0]
    assert not np.isnan(row["ours"]) and row["diff"] == pytest.approx(row["ours"] - row["value"])
    assert row["ci_low"] <= row["ours"] <= row["ci_high"] and row["boot_low"] <= row["boot_high"]
    b2n = pvo[(pvo["method"] == "CoCoOp") & (pvo["split"] == "H") & (pvo["dataset"] == "Average(11)")]
    assert (b2n["note"] == "ours has 2/11 datasets").all()  # never an average over fewer datasets than published
    assert (pvo[pvo["method"] == "ProDA"]["note"] == "no fewclip method").all()


def test_partial_grid_degrades_gracefully(tmp_path):
    cfg = grid_config(seeds=[1])
    cfg["protocols"] = {"fewshot": {"datasets": ["dtd"], "shots": [4], "runs": [{"backbone": "rn50", "methods": ["coop"]}]}}
    runs = make_runs(tmp_path, cfg)
    table = tmp_path / "all.parquet"
    assert main(["collect", "--runs", str(runs), "--out", str(table)]) == 0
    out = tmp_path / "reports"
    assert main(["report", "--table", str(table), "--runs", str(runs), "--out", str(out), "--n-resamples", "100"]) == 0
    notes = (out / "README.md").read_text()
    assert "CD diagram" in notes and "No base-to-new runs" in notes and "No domain-generalization runs" in notes
    assert (out / "tables" / "fewshot_rn50_4shot.md").is_file()
    assert (out / "figures" / "fewshot_curves_rn50.png").is_file()
