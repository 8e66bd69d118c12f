"""A method whose result depends on neither K nor the seed (`uses_fewshot_sample = False`, zero-shot
CLIP): planned and run once per (protocol, backbone, dataset), at the protocol's first K and the
config's first seed, and placed by `fewclip collect` at every (shots, seed) of the other methods,
so the report is byte for byte the one that a copy of the run at every K and seed gave."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO
from test_analysis_fixtures import grid_config, make_runs

from fewclip.analysis.collect import check_consistency, collect_runs, missing_cells, sample_free
from fewclip.cli import main
from fewclip.grid import canonical_cell, expand_grid, sample_free_methods
from fewclip.methods import REGISTRY, Method, load_all
from fewclip.plan import check_config, plan

load_all()
SAMPLE_FREE = sorted(n for n, cls in REGISTRY.items() if not cls.uses_fewshot_sample)


def test_the_contract_declares_it_and_zero_shot_reads_no_sample():
    assert Method.uses_fewshot_sample is True  # the default: a method learns from its few-shot sample
    assert all(isinstance(cls.uses_fewshot_sample, bool) for cls in REGISTRY.values())
    assert SAMPLE_FREE == ["zeroshot"] == sorted(sample_free_methods())


@pytest.mark.parametrize("name", SAMPLE_FREE)
def test_a_method_that_declares_it_gives_the_same_predictions_at_every_k_and_seed(name, tmp_path, fixture_root,
                                                                                  one_torch_thread):
    from fewclip.engine.run import RunSpec, run_cell

    got = {}
    for shots, seed in ((1, 1), (2, 3)):
        out = tmp_path / f"{shots}_{seed}"
        metrics = run_cell(RunSpec(data_root=str(fixture_root), dataset="eurosat", method=name,
                                   backbone="fewclip-tiny-vit", pretrained="none", out=str(out), shots=shots,
                                   seed=seed, features=str(tmp_path / "features")))
        assert metrics["shared_across"] == ["shots", "seed"]
        got[(shots, seed)] = (metrics["top1"], pd.read_parquet(out / "predictions.parquet"))
    (top1_a, preds_a), (top1_b, preds_b) = got.values()
    assert top1_a == top1_b
    pd.testing.assert_frame_equal(preds_a, preds_b)


def test_nothing_outside_the_method_names_it():
    """The registry knows no method by name: the engine, the rules, the schema, the registry, the
    grid and the planner read `uses_fewshot_sample`, never a method's name."""
    paths = ["src/fewclip/engine", "workflow/rules", "workflow/schemas", "src/fewclip/methods/__init__.py",
             "src/fewclip/grid.py", "src/fewclip/plan.py", "src/fewclip/cli/run.py", "src/fewclip/analysis/collect.py"]
    proc = subprocess.run(["git", "grep", "-n", "-i", "zeroshot", "--", *paths], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout


# ----------------------------------------------------------------------------- planning


def test_the_planner_runs_it_once_per_protocol_backbone_and_dataset(monkeypatch):
    config = check_config({**grid_config(), "data_root": "data"})
    planned = [p.cell for p in plan(config)]
    full = expand_grid(config)  # every (K, seed) of every method: what the grid planned before
    once = [c for c in planned if c.method == "zeroshot"]
    assert sorted((c.protocol, c.backbone, c.dataset) for c in once) == sorted(
        {(c.protocol, c.backbone, c.dataset) for c in full if c.method == "zeroshot"})
    assert all((c.shots, c.seed) == canonical_cell(config, c.protocol) for c in once)
    assert {canonical_cell(config, p) for p in ("fewshot", "base2new", "dg")} == {(1, 1), (16, 1)}
    assert [c for c in planned if c.method != "zeroshot"] == [c for c in full if c.method != "zeroshot"]
    assert len(planned) == len(full) - (3 * 3 * 3 - 3) - (2 * 3 - 2) - (3 - 1)

    # the class decides, whatever its name: a plugin that declares it is planned once too
    class FixedPrompt(Method):
        name, uses_fewshot_sample = "fixed_prompt", False

    monkeypatch.setitem(REGISTRY, "fixed_prompt", FixedPrompt)
    config["protocols"]["fewshot"]["runs"][0]["methods"].append("fixed_prompt")
    cells = [p.cell for p in plan(config) if p.cell.method == "fixed_prompt"]
    assert [(c.dataset, c.shots, c.seed) for c in cells] == [(d, 1, 1) for d in ("imagenet", "dtd", "eurosat")]


# ----------------------------------------------------------------------------- collect and report


def _copy_runs(config: dict, root: Path) -> Path:
    """Run directories as the grid wrote them before: zero-shot at every (K, seed), each a copy of
    its canonical cell's result (the same predictions and numbers; its own shots, seed and manifest)."""
    runs = make_runs(root, config)
    for cell in expand_grid(config):
        canon = canonical_cell(config, cell.protocol)
        if cell.method != "zeroshot" or (cell.shots, cell.seed) == canon:
            continue
        dst = runs / Path(cell.run_dir).relative_to("results/runs")
        src = dst.parent.parent / f"{canon[0]}shot" / f"seed{canon[1]}"
        for f in src.rglob("*"):
            target = dst / f.relative_to(src)
            if f.name == "metrics.json":
                mine, m = json.loads(target.read_text()), json.loads(f.read_text())
                m.update(shots=mine["shots"], seed=mine["seed"])
                m["provenance"] = {**m["provenance"], "manifest_sha256": mine["provenance"]["manifest_sha256"]}
                target.write_text(json.dumps(m))
            elif f.is_file():
                shutil.copyfile(f, target)
    return runs


def _one_run(config: dict, copies: Path, root: Path) -> Path:
    """The same results as this grid writes them now: zero-shot's canonical cell only, saying
    that it stands for every K and seed."""
    runs = root / "results" / "runs"
    shutil.copytree(copies, runs)
    for cell in expand_grid(config):
        if cell.method != "zeroshot":
            continue
        folder = runs / Path(cell.run_dir).relative_to("results/runs")
        if (cell.shots, cell.seed) != canonical_cell(config, cell.protocol):
            shutil.rmtree(folder)
            continue
        for path in folder.rglob("metrics.json"):
            path.write_text(json.dumps({**json.loads(path.read_text()), "shared_across": ["shots", "seed"]}))
    return runs


@pytest.fixture(scope="module")
def two_grids(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    config = grid_config()
    copies = _copy_runs(config, root / "copies")
    once = _one_run(config, copies, root / "once")
    return config, copies, once


def test_collect_places_the_one_result_at_every_k_and_seed(two_grids):
    config, copies, once = two_grids
    old, new = collect_runs(copies), collect_runs(once)
    check_consistency(new)  # the copies read no manifest of their cell: no mixed-manifest refusal
    key = ["protocol", "backbone_key", "dataset", "method", "shots", "seed", "eval"]
    assert len(new) == len(old) and not old["replica"].any()
    assert sorted(map(tuple, new[key].fillna("").to_numpy())) == sorted(map(tuple, old[key].fillna("").to_numpy()))
    zs = new[new["method"] == "zeroshot"]
    copies_ = zs[zs["replica"]]
    # the runs' own rows: 3 few-shot, 2 base-to-new (+ new), DG (+ 4 targets)
    assert len(copies_) == len(zs) - (3 + 2 * 2 + 1 * 5)
    assert copies_["run_dir"].str.contains("/1shot/seed1|/16shot/seed1", regex=True).all()
    assert copies_["provenance.manifest_sha256"].isna().all()
    assert set(zip(zs[zs["protocol"] == "fewshot"]["shots"], zs[zs["protocol"] == "fewshot"]["seed"])) == {
        (k, s) for k in (1, 2, 4) for s in (1, 2, 3)}
    for col in ("top1", "n_test", "metrics_dir", "has_predictions"):
        a = old[old["method"] == "zeroshot"].fillna({"eval": ""}).set_index(key)[col].sort_index()
        b = zs.fillna({"eval": ""}).set_index(key)[col].sort_index()
        if col == "metrics_dir":  # every copy points at the one run's folder
            assert (b.str.extract(r"/(\d+shot/seed\d+)")[0].isin(["1shot/seed1", "16shot/seed1"])).all()
        else:
            pd.testing.assert_series_equal(a, b)
    # alone, with no other method and no grid, it stays where it ran; the config's grid places it
    alone = once.parent / "alone"
    shutil.copytree(once / "fewshot/rn50/dtd/zeroshot", alone / "fewshot/rn50/dtd/zeroshot")
    assert len(collect_runs(alone)) == 1
    assert len(collect_runs(alone, config)) == 9


def test_collect_config_lists_no_skipped_copy_as_missing(two_grids, tmp_path):
    config, _, once = two_grids
    df = collect_runs(once)
    assert sample_free(config, df) == {"zeroshot"}  # from the runs' metrics.json: no registry
    assert missing_cells(config, once, {"zeroshot"}).empty
    assert len(missing_cells(config, once)) == (27 - 3) + (6 - 2) * 2 + (3 - 1) * 5  # without it, every copy
    # the whole verb, in a fresh process: nothing missing, and torch never imported
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(json.dumps(config))
    code = ("import sys; from fewclip.cli import main; "
            f"rc = main(['collect', '--runs', {str(once)!r}, '--config', {str(cfg)!r}, '--out', "
            f"{str(tmp_path / 'all_runs.parquet')!r}, '--strict']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "every cell of the configured grid is finished" in proc.stdout
    # a grid whose zero-shot has not run at all: only its canonical cells are missing
    bare = tmp_path / "bare"
    shutil.copytree(once, bare)
    for folder in bare.glob("*/*/*/zeroshot"):
        shutil.rmtree(folder)
    missing = missing_cells(config, bare, sample_free(config, collect_runs(bare)))
    assert set(missing["method"]) == {"zeroshot"} and len(missing) == 3 + 2 * 2 + 1 * 5
    assert set(zip(missing["shots"], missing["seed"])) == {(1, 1), (16, 1)}


def _report(runs: Path, out: Path) -> Path:
    table = out / "all_runs.parquet"
    assert main(["collect", "--runs", str(runs), "--out", str(table)]) == 0
    assert main(["report", "--table", str(table), "--runs", str(runs), "--out", str(out / "reports"),
                 "--n-resamples", "200"]) == 0
    return out / "reports"


def test_the_report_is_the_one_the_copies_gave(two_grids, tmp_path):
    """Tables, curves (figures and their data), significance tests (t-tests, McNemar, bootstrap),
    paper-vs-ours and the index: every file byte for byte what the report of zero-shot copied at
    every K and seed is."""
    _, copies, once = two_grids
    before, after = _report(copies, tmp_path / "copies"), _report(once, tmp_path / "once")
    files = sorted(p.relative_to(before) for p in before.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(after) for p in after.rglob("*") if p.is_file())
    assert len(files) > 60 and Path("README.md") in files and Path("figures/fewshot_curves_rn50.png") in files
    assert {"tables", "stats", "plots", "figures"} <= {f.parts[0] for f in files}
    for f in files:
        assert (before / f).read_bytes() == (after / f).read_bytes(), f
    curve = pd.read_csv(after / "plots" / "fewshot_curves.csv")
    assert set(curve[curve["method"] == "zeroshot"]["shots"]) == {1, 2, 4}
