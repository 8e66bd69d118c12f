"""Cross-dataset transfer (CoCoOp's Table 2): the dg entry's `cross_dataset` targets are evaluated by
the model its cells train, once per (method, shots, seed), each scored with its own class names;
class-specific heads report n/a. Planning (fewclip plan, the Snakemake DAG), validation before any
work, a tiny run on fixture datasets in the real layouts, and the report's table."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, refused
from test_workflow import job_stats, snakemake, write_config

from fewclip.errors import ConfigError
from fewclip.grid import expand_grid, expected_metrics, sample_free_methods
from fewclip.plan import check_config, plan, plan_lines, read_config

TINY = "fewclip-tiny-vit"
XD_TEN = ["caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft", "sun397",
          "dtd", "eurosat", "ucf101"]


def dg_config(data_root="data", **dg) -> dict:
    return {
        "data_root": str(data_root), "seeds": [1, 2], "device": "cpu", "views": 0, "templates": ["dataset"],
        "reports": False, "backbones": {"tiny": {"model": TINY, "pretrained": "none"}},
        "protocols": {"dg": {"source": "imagenet", "targets": ["imagenet_v2"], "cross_dataset": ["dtd", "eurosat"],
                             "shots": 1, "runs": [{"backbone": "tiny", "methods": ["zeroshot", "coop"]}], **dg}},
    }


# ----------------------------------------------------------------------------- planning


def test_one_model_per_method_and_seed_is_evaluated_on_dg_and_cross_dataset_targets():
    planned = plan(check_config(dg_config()))
    cells = [p.cell for p in planned]
    # zero-shot reads no few-shot sample (uses_fewshot_sample = False): one cell, the first seed's
    assert sorted((c.method, c.seed) for c in cells) == [("coop", 1), ("coop", 2), ("zeroshot", 1)]
    for c in cells:  # one dg cell each, no cell per target
        assert (c.protocol, c.dataset) == ("dg", "imagenet")
        assert c.evals == ("imagenet_v2", "dtd", "eurosat") and c.cross_dataset == ("dtd", "eurosat")
        assert c.eval_dirs() == [f"{c.run_dir}/eval_{t}" for t in ("imagenet_v2", "dtd", "eurosat")]
    metrics = {p.as_posix() for p in expected_metrics(dg_config(), sample_free=sample_free_methods())}
    assert f"{cells[0].run_dir}/eval_eurosat/metrics.json" in metrics and len(metrics) == 3 * 4
    line = next(ln for ln in plan_lines(planned, as_json=False) if ln.startswith("dg tiny imagenet coop 1shot seed1"))
    assert " eval=imagenet_v2 cross_dataset=dtd,eurosat " in line
    row = json.loads(plan_lines(planned, as_json=True)[0])
    assert row["cross_dataset"] == ["dtd", "eurosat"] and row["evals"] == ["imagenet_v2", "dtd", "eurosat"]
    # cross-dataset targets alone (no DG targets) are a dg entry too
    only = plan(check_config(dg_config(targets=[])))
    assert all(p.cell.evals == ("dtd", "eurosat") for p in only) and len(only) == 3


def test_the_paper_config_scores_cocoops_table_2_with_the_dg_models():
    """paper.yaml: CoCoOp's 10 targets join the 19 DG cells (6 methods x 3 seeds + zero-shot once),
    with the settings of scripts/cocoop/xd_train.sh, and the grid gains no cell."""
    config = check_config(read_config([REPO / "config" / "paper.yaml"]))
    planned = plan(config)
    dg = [p for p in planned if p.cell.protocol == "dg"]
    assert len(dg) == 28 and len({(p.cell.method, p.cell.seed) for p in dg}) == 28  # + MaPLe, PromptSRC, GDA x 3 seeds
    assert {p.cell.shots for p in dg} == {16} and {p.cell.backbone for p in dg} == {"ViT-B-16"}
    assert {"zeroshot", "coop", "cocoop", "clip_adapter"} <= {p.cell.method for p in dg}
    for p in dg:
        assert p.cell.dataset == "imagenet" and list(p.cell.cross_dataset) == XD_TEN
        assert p.cell.evals == ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r", *XD_TEN)
    hp = {p.cell.method: p.hparams for p in dg if p.cell.seed == 1}
    # CoOp vit_b16_ep50_ctxv1: 4 contexts from "a photo of a", 50 epochs, batch 32, SGD 0.002
    assert {k: hp["coop"][k] for k in ("n_ctx", "ctx_init", "csc", "epochs", "batch_size", "lr", "warmup_epochs")} == \
        {"n_ctx": 4, "ctx_init": "a photo of a", "csc": False, "epochs": 50, "batch_size": 32, "lr": 0.002,
         "warmup_epochs": 1}
    # CoCoOp vit_b16_c4_ep10_batch1_ctxv1
    assert {k: hp["cocoop"][k] for k in ("n_ctx", "ctx_init", "epochs", "batch_size", "lr")} == \
        {"n_ctx": 4, "ctx_init": "a photo of a", "epochs": 10, "batch_size": 1, "lr": 0.002}
    without = copy.deepcopy(config)
    del without["protocols"]["dg"]["cross_dataset"]
    cells = [(p.cell.run_dir, p.hparams_sha) for p in planned]
    assert [(p.cell.run_dir, p.hparams_sha) for p in plan(without)] == cells


@pytest.mark.parametrize("dg, words", [
    ({"cross_dataset": ["imagenet", "dtd"]}, ["protocols.dg.cross_dataset", "imagenet", "source"]),
    ({"cross_dataset": ["imagenet_v2"]},
     ["protocols.dg.cross_dataset", "imagenet_v2", "also under protocols.dg.targets"]),
    ({"cross_dataset": ["dtd", "dtd"]}, ["protocols.dg.cross_dataset", "dtd", "twice"]),
    ({"targets": [], "cross_dataset": []}, ["protocols.dg", "no targets", "cross_dataset"]),
    ({"cross_dataset": ["dtdd"]}, ["protocols.dg.cross_dataset.0", "dtdd"]),
])
def test_a_wrong_cross_dataset_entry_is_refused_naming_the_key(dg, words):
    with pytest.raises(ConfigError) as err:
        check_config(dg_config(**dg))
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_snakemake_plans_one_dg_job_per_method_and_seed_after_the_target_stores(tmp_path, fixture_root):
    cfg = write_config(tmp_path / "c.yaml", fixture_root, seeds=[1, 2], protocols=dg_config()["protocols"])
    rc, out = snakemake("-n", "-p", "--configfile", cfg, "--directory", tmp_path / "work", timeout=300)
    assert rc == 0, out[-4000:]
    stats = job_stats(out)
    # coop, 2 seeds: one training each; zero-shot (no few-shot sample read) once
    assert stats["fit"] == 1 and stats["fit_gpu"] == 2
    assert stats["encode"] == 4  # the source, the DG target and both cross-dataset targets
    runs = [ln for ln in out.splitlines() if "fewclip run " in ln]
    assert len(runs) == 3 and all("--eval imagenet_v2 --cross-dataset dtd eurosat" in ln for ln in runs)
    inputs = [ln for ln in out.splitlines()
              if ln.strip().startswith("input:") and "splits/imagenet" in ln and "store.json" in ln]
    assert len(inputs) == 3
    for ln in inputs:
        for t in ("imagenet", "imagenet_v2", "dtd", "eurosat"):
            assert f"results/features/tiny/{t}/store.json" in ln, ln


# ----------------------------------------------------------------------------- validation before any work


def common(tmp_path, root):
    return ["--backbone", TINY, "--pretrained", "none", "--device", "cpu", "--data-root", root,
            "--features", tmp_path / "features", "--backbone-key", "tiny", "--dataset", "imagenet", "--shots", 1,
            "--seed", 1]


def _root(fixture_root, tmp_path, drop=(), edit=None):
    """Symlinks to the fixture datasets, without `drop`; `edit` (folder name → function) copies and edits one."""
    import shutil

    root = tmp_path / "root"
    root.mkdir()
    for d in fixture_root.iterdir():
        if d.name in (edit or {}):
            shutil.copytree(d, root / d.name)
            edit[d.name](root / d.name)
        elif d.name not in drop:
            (root / d.name).symlink_to(d)
    return root


def _empty_test(folder):
    split = folder / "split_zhou_DescribableTextures.json"
    data = json.loads(split.read_text())
    data["test"] = []
    split.write_text(json.dumps(data))


@pytest.mark.parametrize("case, words", [
    ("missing", ["cross-dataset target dtd of imagenet", "dtd", "not found"]),
    ("empty", ["test (cross-dataset target of imagenet) split of dtd is empty"]),
    ("not dg", ["--cross-dataset dtd", "--protocol dg"]),
    ("source", ["--cross-dataset imagenet", "source"]),
    ("twice", ["dtd", "both a DG target", "cross-dataset target"]),
])
def test_a_cross_dataset_target_that_cannot_be_scored_is_refused_before_any_work(tmp_path, fixture_root, cli, case,
                                                                                  words):
    root = fixture_root
    args = ["--protocol", "dg", "--cross-dataset", "dtd"]
    if case == "missing":
        root = _root(fixture_root, tmp_path, drop=("dtd",))
    elif case == "empty":
        root = _root(fixture_root, tmp_path, edit={"dtd": _empty_test})
    elif case == "not dg":
        args = ["--cross-dataset", "dtd"]
    elif case == "source":
        args = ["--protocol", "dg", "--cross-dataset", "imagenet"]
    else:
        args = ["--protocol", "dg", "--eval", "dtd", "--cross-dataset", "dtd"]
    out = tmp_path / "run"
    refused(cli("run", *common(tmp_path, root), "--method", "zeroshot", *args, "--out", out), *words)
    assert not out.exists() and not (tmp_path / "features").exists()


# ----------------------------------------------------------------------------- a tiny run, collect and report


@pytest.fixture(scope="module")
def xd_run(tmp_path_factory, one_torch_thread):
    """ImageNet (4 classes) → DG target ImageNet-V2 and cross-dataset targets DTD (3 classes) and
    EuroSAT (5 classes), in their real layouts: four methods in one `fewclip run`, then collect and report."""
    from fewclip import cli as entry
    from fewclip.data.fixtures import write_fixture

    tmp = tmp_path_factory.mktemp("xd")
    root = tmp / "data"
    for name, n in (("imagenet", 4), ("imagenet_v2", 4), ("dtd", 3), ("eurosat", 5)):
        write_fixture(name, root, n_classes=n)
    runs = tmp / "runs"
    args = ["run", *common(tmp, root), "--method", "zeroshot", "linear_probe", "tip_adapter", "coop",
            "--protocol", "dg", "--eval", "imagenet_v2", "--cross-dataset", "dtd", "eurosat",
            "--out", runs / "dg/tiny/imagenet/{method}/1shot/seed1", "--set", "coop.epochs=1",
            "--set", "tip_adapter.views=2"]
    assert entry.main([str(a) for a in args]) == 0
    table = tmp / "all_runs.parquet"
    assert entry.main(["collect", "--runs", str(runs), "--out", str(table)]) == 0
    assert entry.main(["report", "--table", str(table), "--runs", str(runs), "--out", str(tmp / "reports"),
                       "--n-resamples", "20"]) == 0
    return runs / "dg/tiny/imagenet", tmp / "reports"


def _m(path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def test_text_side_methods_score_each_target_with_its_own_classes(xd_run):
    cells, _ = xd_run
    for method in ("zeroshot", "coop"):
        cell = cells / method / "1shot/seed1"
        for target, n in (("dtd", 3), ("eurosat", 5)):
            m = _m(cell / f"eval_{target}")
            assert (m["eval_dataset"], m["n_classes"], m["eval_protocol"]) == (target, n, "cross_dataset")
            assert isinstance(m["top1"], float) and "na_reason" not in m
            preds = pd.read_parquet(cell / f"eval_{target}" / "predictions.parquet")
            assert preds["pred"].between(0, n - 1).all() and preds["label"].nunique() == n
            # the same fitted model: the cell's training, recorded once, shared by every evaluation
            assert m["train_seconds"] == _m(cell)["train_seconds"] and m["hparams"] == _m(cell)["hparams"]
        dg = _m(cell / "eval_imagenet_v2")
        assert (dg["eval_protocol"], dg["n_classes"]) == ("dg", 4)
    assert sorted(p.name for p in (cells / "coop/1shot/seed1").iterdir()) == [
        "checkpoint.pt", "eval_dtd", "eval_eurosat", "eval_imagenet_v2", "metrics.json", "predictions.parquet"]


@pytest.mark.parametrize("method", ["linear_probe", "tip_adapter"])
def test_class_specific_heads_are_na_on_other_datasets_but_score_dg_targets(xd_run, method):
    cells, _ = xd_run
    cell = cells / method / "1shot/seed1"
    for target in ("dtd", "eurosat"):
        m = _m(cell / f"eval_{target}")
        assert m["top1"] is None and m["na_reason"] and m["eval_protocol"] == "cross_dataset"
        assert not (cell / f"eval_{target}" / "predictions.parquet").exists()
    assert isinstance(_m(cell / "eval_imagenet_v2")["top1"], float)


def test_the_report_has_cocoops_table_2_shape(xd_run):
    cells, reports = xd_run
    table = pd.read_csv(reports / "tables/cross_dataset_tiny_1shot.csv", index_col=0, keep_default_na=False)
    assert list(table.index) == ["zeroshot", "linear_probe", "coop", "tip_adapter"]
    assert list(table.columns) == ["imagenet", "dtd", "eurosat", "Target avg"]
    for method in ("zeroshot", "coop"):
        cell = cells / method / "1shot/seed1"
        top1 = {t: _m(cell / f"eval_{t}")["top1"] for t in ("dtd", "eurosat")}
        assert table.loc[method, "imagenet"] == pytest.approx(round(_m(cell)["top1"], 2))
        assert float(table.loc[method, "dtd"]) == pytest.approx(round(top1["dtd"], 2))
        assert float(table.loc[method, "Target avg"]) == pytest.approx(round(np.mean(list(top1.values())), 2))
    for method in ("linear_probe", "tip_adapter"):
        assert list(table.loc[method, ["dtd", "eurosat", "Target avg"]]) == ["n/a"] * 3
    dg = pd.read_csv(reports / "tables/dg_tiny_1shot.csv", index_col=0)
    assert list(dg.columns) == ["imagenet", "imagenet_v2", "Target avg"]  # the DG table keeps its own targets
    index = (reports / "README.md").read_text()
    sections = [index.index(f"## {h}") for h in ("Domain generalization", "Cross-dataset transfer", "Efficiency")]
    assert sections == sorted(sections)
    assert "tables/cross_dataset_tiny_1shot.md" in index


# ----------------------------------------------------------------------------- the table, marks and paper-vs-ours


def _synthetic_table() -> pd.DataFrame:
    """ViT-B-16 dg cells (ImageNet, 16 shots, 3 seeds) with the 10 cross-dataset targets, as collected,
    and a few-shot CoCoOp Caltech101 cell that must not stand in for the transfer result."""
    rng = np.random.default_rng(0)
    rows = []
    base = {"zeroshot": 60.0, "coop": 66.0, "cocoop": 70.0, "linear_probe": 50.0}
    for method, acc in base.items():
        for seed in (1, 2, 3):
            common = {"protocol": "dg", "backbone_key": "ViT-B-16", "backbone": "ViT-B-16", "pretrained": "openai",
                      "preset": "clean", "dataset": "imagenet", "method": method, "shots": 16, "seed": seed}
            noise = 0.0 if method == "zeroshot" else rng.normal(0, 0.1)
            rows.append({**common, "eval_dataset": "imagenet", "eval_split": "test", "top1": acc + noise,
                         "is_cell": True})
            for i, t in enumerate(["imagenet_v2", *XD_TEN]):
                xd = t != "imagenet_v2"
                top1 = None if (xd and method == "linear_probe") else acc - i + noise + 0.01 * i * seed
                rows.append({**common, "eval_dataset": t, "eval_split": "test", "top1": top1, "is_cell": False,
                             "eval_protocol": "cross_dataset" if xd else "dg"})
    for seed in (1, 2, 3):
        rows.append({"protocol": "fewshot", "backbone_key": "ViT-B-16", "backbone": "ViT-B-16", "pretrained": "openai",
                     "preset": "clean", "dataset": "caltech101", "method": "cocoop", "shots": 16, "seed": seed,
                     "eval_dataset": "caltech101", "eval_split": "test", "top1": 99.0, "is_cell": True})
    return pd.DataFrame(rows)


def test_the_table_averages_seeds_marks_differences_and_joins_the_published_rows(tmp_path):
    from fewclip.analysis.paper import published
    from fewclip.analysis.report import build_report

    table = _synthetic_table()
    out = tmp_path / "reports"
    build_report(table, None, out, n_resamples=20, workers=0)
    xd = pd.read_csv(out / "tables/cross_dataset_ViT-B-16_16shot.csv", index_col=0, keep_default_na=False)
    assert list(xd.index) == ["zeroshot", "linear_probe", "coop", "cocoop"]
    assert list(xd.columns) == ["imagenet", *XD_TEN, "Target avg"]
    cocoop = table[(table["method"] == "cocoop") & (table["protocol"] == "dg") & table["eval_dataset"].isin(XD_TEN)]
    avg = cocoop.groupby("seed")["top1"].mean()
    assert xd.loc["cocoop", "Target avg"] == f"{avg.mean():.2f} ± {avg.std():.2f}"
    caltech = cocoop[cocoop.eval_dataset == "caltech101"].top1
    assert xd.loc["cocoop", "caltech101"].startswith(f"{caltech.mean():.2f} ± ")
    assert "†" in xd.loc["cocoop", "caltech101"]  # differs from zero-shot (t-test, Holm within the table)
    assert "†" in xd.loc["cocoop", "imagenet"]  # the source: the dg cell, with the DG table's marks
    assert list(xd.loc["linear_probe", [*XD_TEN, "Target avg"]]) == ["n/a"] * 11
    dg = pd.read_csv(out / "tables/dg_ViT-B-16_16shot.csv", index_col=0)
    assert list(dg.columns) == ["imagenet", "imagenet_v2", "Target avg"]
    ttests = pd.read_csv(out / "stats/ttest_vs_baselines.csv")
    assert set(ttests[ttests["eval_dataset"] == "dtd"]["family"]) == {"cross_dataset_ViT-B-16_16shot"}
    # paper-vs-ours: the published cross-dataset rows (loaded, never retyped) meet the transfer runs
    full = pd.read_csv(out / "tables/paper_vs_ours_all.csv")
    pub = published()
    rows = pub[pub["table"].str.contains("Cross-dataset") & (pub["method"] == "CoCoOp")]
    assert len(rows) == 12
    ours = full[full["table"].str.contains("Cross-dataset") & (full["method"] == "CoCoOp")].set_index("dataset")
    assert ours.loc["Caltech101", "ours"] == pytest.approx(caltech.mean())  # not the few-shot Caltech101 run (99.0)
    assert ours.loc["ImageNet", "ours"] == pytest.approx(table[(table.method == "cocoop") & table.is_cell
                                                               & (table.protocol == "dg")].top1.mean())
    assert ours.loc["Average(10 targets)", "ours"] == pytest.approx(avg.mean())
    assert ours["ours"].notna().all()
