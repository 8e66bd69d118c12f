"""`fewclip collect`: one row per metrics.json, missing cells listed, mixed runs refused."""

import json
import time

import pandas as pd
import pytest
from test_analysis_fixtures import grid_config, make_runs

from fewclip.analysis.collect import check_consistency, collect_runs, missing_cells
from fewclip.cli import main
from fewclip.errors import FewclipError
from fewclip.grid import expected_metrics


def test_collect_table_has_every_metrics_file(tmp_path):
    runs = make_runs(tmp_path)
    out = tmp_path / "results" / "all_runs.parquet"
    assert main(["collect", "--runs", str(runs), "--out", str(out)]) == 0
    df = pd.read_parquet(out)
    assert len(df) == len(expected_metrics(grid_config()))
    assert (out.with_suffix(".csv")).is_file()
    assert {"hparams.lr", "provenance.manifest_sha256", "top1", "na_reason", "metrics_dir", "eval"} <= set(df.columns)
    new = df[(df["protocol"] == "base2new") & (df["eval"] == "new")]
    assert new[new["method"] == "linear_probe"]["top1"].isna().all()
    assert set(df[df["protocol"] == "dg"]["eval_dataset"]) == {"imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"}


def test_collect_lists_missing_cells(tmp_path, capsys):
    runs = make_runs(tmp_path, skip={("coop", "dtd", 2, 3)})
    (runs / "fewshot/rn50/dtd/coop/4shot/seed3/metrics.json").unlink()  # unfinished: folder without metrics.json
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(grid_config()))  # JSON is YAML
    out = tmp_path / "results" / "all_runs.parquet"
    assert main(["collect", "--runs", str(runs), "--config", str(cfg), "--out", str(out)]) == 0
    missing = pd.read_csv(tmp_path / "results" / "missing.csv")
    assert sorted(zip(missing["shots"], missing["status"])) == [(2, "not run"), (4, "unfinished")]
    assert "2 metrics files of the configured grid are missing" in capsys.readouterr().err
    assert main(["collect", "--runs", str(runs), "--config", str(cfg), "--out", str(out), "--strict"]) == 1
    assert missing_cells(grid_config(), make_runs(tmp_path / "full")).empty


def test_mixed_presets_refused(tmp_path, capsys):
    runs = make_runs(tmp_path, overrides={("fewshot", "coop", "dtd", 1, 2): {"preset": "official"}})
    out = tmp_path / "all_runs.parquet"
    assert main(["collect", "--runs", str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "differ in preset" in err and "fewshot/rn50/dtd/coop/1shot/seed2" in err
    assert not out.exists()


def test_mixed_manifests_refused(tmp_path):
    runs = make_runs(tmp_path, overrides={("fewshot", "coop", "dtd", 1, 2): {"provenance": {"manifest_sha256": "other"}}})
    with pytest.raises(FewclipError, match="provenance.manifest_sha256"):
        check_consistency(collect_runs(runs))


def test_collect_5000_runs_fast(tmp_path):
    runs = tmp_path / "runs"
    metrics = {"protocol": "fewshot", "preset": "clean", "backbone": "RN50", "pretrained": "openai", "top1": 50.0,
               "hparams": {"lr": 0.1}, "provenance": {"manifest_sha256": None}}
    for i in range(5000):
        d = runs / f"fewshot/rn50/ds{i % 50}/m{i // 50 % 20}/{1 + i // 1000}shot/seed{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.json").write_text(json.dumps(metrics))
    start = time.perf_counter()
    df = collect_runs(runs)
    check_consistency(df)
    assert len(df) == len(list(runs.rglob("metrics.json")))
    assert time.perf_counter() - start < 15
