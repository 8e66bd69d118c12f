"""`batch_cells` runs every (method, shots, seed) cell of one (protocol, backbone,
dataset, side) in one process, so the demo starts 14 Python processes for its fits instead of 67.
`fewclip run --method A B ...` is what those jobs call: each cell keeps its own run directory,
its own scoped `--set` values and its planned digest."""

from __future__ import annotations

import json
import re
import shlex
import shutil

from conftest import REPO, refused
from test_workflow import job_stats, snakemake

from fewclip.grid import image_methods
from fewclip.methods import REGISTRY, load_all

load_all()

TINY = "fewclip-tiny-vit"


def _common(tmp_path, data):
    return ["--backbone", TINY, "--pretrained", "none", "--device", "cpu", "--data-root", data,
            "--features", tmp_path / "features", "--dataset", "dtd"]


def _metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_several_methods_run_in_one_process_as_they_do_alone(tmp_path, fixture_root, cli):
    out = tmp_path / "runs/{method}/seed{seed}"
    proc = cli("run", *_common(tmp_path, fixture_root), "--method", "zeroshot", "clip_adapter", "--shots", 1,
               "--seed", 1, 2, "--out", out, "--set", "clip_adapter.epochs=2", check=True)
    for seed in (1, 2):
        m = _metrics(tmp_path / f"runs/clip_adapter/seed{seed}")
        assert (m["method"], m["seed"], m["status"]) == ("clip_adapter", seed, "complete")
    # zero-shot reads no few-shot sample (uses_fewshot_sample = False): its one cell, the first
    # --shots and --seed, stands for every seed, and says so
    m = _metrics(tmp_path / "runs/zeroshot/seed1")
    assert (m["method"], m["seed"], m["status"], m["shared_across"]) == ("zeroshot", 1, "complete", ["shots", "seed"])
    assert not (tmp_path / "runs/zeroshot/seed2").exists()
    assert "shared_across" not in _metrics(tmp_path / "runs/clip_adapter/seed1")
    assert "zeroshot: one cell (1-shot, seed 1) stands for every --shots and --seed" in proc.stderr
    assert _metrics(tmp_path / "runs/clip_adapter/seed1")["hparams"]["epochs"] == 2  # the scoped --set
    assert "epochs" not in _metrics(tmp_path / "runs/zeroshot/seed1")["hparams"]
    # the same cell run alone, with the unscoped --set of a one-method run
    cli("run", *_common(tmp_path, fixture_root), "--method", "clip_adapter", "--shots", 1, "--seed", 2,
        "--out", tmp_path / "alone", "--set", "epochs=2", check=True)
    batched, alone = _metrics(tmp_path / "runs/clip_adapter/seed2"), _metrics(tmp_path / "alone")
    assert batched["top1"] == alone["top1"] and batched["hparams"] == alone["hparams"]


def test_a_cell_trains_the_same_first_in_its_process_or_after_another(tmp_path, fixture_root, cli):
    """The first cell of a process loads the backbone (open_clip initialises it randomly before
    loading weights): that must not shift the random stream its prompts and batches come from."""
    from official_ref import checkpoint

    from fewclip.engine import run

    args = ["--backbone", "fewclip-ref-vit", "--pretrained", checkpoint("vit"), "--device", "cpu", "--data-root",
            fixture_root, "--features", tmp_path / "features", "--dataset", "dtd", "--shots", 1, "--seed", 1,
            "--set", "epochs=1"]  # a local checkpoint: open_clip initialises the model randomly, then loads it
    run._cached_backbone.cache_clear()  # this test process may have loaded it already
    cli("run", *args, "--method", "coop", "--out", tmp_path / "alone", check=True)
    cli("run", *args, "--method", "vpt", "coop", "--out", tmp_path / "after/{method}", check=True)
    alone, after = _metrics(tmp_path / "alone"), _metrics(tmp_path / "after/coop")
    assert after["train"]["final_loss"] == alone["train"]["final_loss"]
    assert after["top1"] == alone["top1"]


def test_an_unscoped_set_applies_to_every_method_and_a_scoped_one_wins(tmp_path, fixture_root, cli):
    from fewclip.cli.run import parse_overrides

    assert parse_overrides(["epochs=3", "coop.epochs=5", "coop.lr=0.1"], ["coop", "vpt"]) == {
        "coop": {"epochs": 5, "lr": 0.1}, "vpt": {"epochs": 3}}


def test_bad_multi_method_runs_are_refused_before_anything_is_written(tmp_path, fixture_root, cli):
    base = [*_common(tmp_path, fixture_root), "--shots", 1, "--seed", 1]
    cases = [
        (["--method", "zeroshot", "zeroshot", "--out", tmp_path / "r/{method}"], ["names a method twice"]),
        (["--method", "zeroshot", "clip_adapter", "--out", tmp_path / "r/x"], ["--method", "{method}", "--out"]),
        (["--method", "zeroshot", "--out", tmp_path / "r/x", "--set", "coop.epochs=1"],
         ["coop", "not one of this run's methods", "zeroshot"]),
        (["--method", "zeroshot", "clip_adapter", "--out", tmp_path / "r/{method}", "--set", "clip_adapter.epochs=0"],
         ["epochs=0", "at least 1"]),  # a bad value of the second method stops the first one too
        (["--method", "zeroshot", "clip_adapter", "--out", tmp_path / "r/{method}", "--expect-hparams", "a" * 64],
         ["--expect-hparams", "1 digests for 2 cells"]),
        (["--method", "zeroshot", "clip_adapter", "--seed", 1, 2, "--out", tmp_path / "r/{method}/{seed}",
          "--expect-hparams", *["a" * 64] * 4], ["--expect-hparams", "4 digests for 3 cells"]),  # zero-shot: one
    ]
    for extra, words in cases:
        refused(cli("run", *base, *extra), *words)
        assert not (tmp_path / "r").exists() and not (tmp_path / "features").exists()


def _batched_cells(out: str, image_methods: set) -> dict:
    """{(protocol, backbone, dataset, method, shots, seed): digest} of the `fewclip run` commands
    of a dry run (`-p`); each job's methods are on one side, each cell is run once."""
    ran = {}
    for line in re.findall(r"fewclip run .*$", out, flags=re.M):
        argv = shlex.split(line.split(" > ")[0])[2:]
        opts, key = {}, None
        for a in argv:
            if a.startswith("--"):
                key = a
                opts.setdefault(key, [])
            else:
                opts[key].append(a)
        methods = opts["--method"]
        assert len({m in image_methods for m in methods}) == 1, methods  # one side per job
        # a method whose class declares uses_fewshot_sample = False runs its first K and seed only
        cells = [(m, int(k), int(s)) for m in methods for k in opts["--shots"] for s in opts["--seed"]
                 if REGISTRY[m].uses_fewshot_sample or (k, s) == (opts["--shots"][0], opts["--seed"][0])]
        assert len(cells) == len(opts["--expect-hparams"])
        for (m, k, s), sha in zip(cells, opts["--expect-hparams"]):
            cell = (opts["--protocol"][0], opts["--backbone-key"][0], opts["--dataset"][0], m, k, s)
            assert cell not in ran, cell
            ran[cell] = sha
        for pair in opts.get("--set", []):
            assert pair.split(".")[0] in methods, pair  # each method's own method_params
    return ran


def _planned(config: dict) -> dict:
    from fewclip.plan import plan

    return {(c.cell.protocol, c.cell.backbone, c.cell.dataset, c.cell.method, c.cell.shots, c.cell.seed): c.hparams_sha
            for c in plan(config)}


def test_the_demo_runs_each_cell_once_in_one_job_per_protocol_dataset_and_side(tmp_path):
    """The demo's dry run: 17 batched fit jobs (7 (protocol, dataset) pairs × image/feature side;
    the few-shot image runs split by their own K: 1/4/16 shots, and KgCoOp's 4), and together they
    run every planned cell exactly once, with its planned digest: zero-shot (its result depends on
    neither K nor the seed) once per (protocol, dataset), 598 cells in all."""
    from fewclip.plan import check_config, read_config

    demo = check_config(read_config([], workdir=REPO))
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    rc, out = snakemake("-n", "-p", "--directory", tmp_path, timeout=300)
    assert rc == 0, out[-4000:]
    stats = job_stats(out)
    batch = {r: n for r, n in stats.items() if r.startswith("fit_batch")}
    assert sum(batch.values()) == 17 and set(batch) == {
        f"fit_batch_{p}_micro_{side}" for p in ("base2new", "dg") for side in ("images", "features")} | {
        "fit_batch_fewshot_micro_features", "fit_batch_fewshot_micro_images_k1_4_16", "fit_batch_fewshot_micro_images_k4"}
    ran = _batched_cells(out, image_methods())
    assert ran == _planned(demo) and len(ran) == 598  # 648 with zero-shot at every K and seed
    once = sorted((p, d, k, s) for p, _, d, m, k, s in ran if m == "zeroshot")
    assert once == [("base2new", d, 16, 1) for d in ("demo_scenes", "demo_shapes", "demo_textures")] + [
        ("dg", "demo_shapes", 16, 1)] + [("fewshot", d, 1, 1) for d in ("demo_scenes", "demo_shapes", "demo_textures")]
    # the batched jobs declare only that cell of zero-shot as an output
    outputs = "\n".join(re.findall(r"^\s*output: (.*)$", out, flags=re.M))
    declared = set(re.findall(r"results/runs/[^,\s]*/zeroshot/[^,\s]*", outputs))
    assert declared == {f"results/runs/{p}/micro/{d}/zeroshot/{k}shot/seed{s}/metrics.json" for p, d, k, s in once}


def test_the_paper_grid_batched_runs_each_of_its_cells_once(tmp_path, fixture_root):
    """batch_cells on the paper config: one rule per (protocol, backbone, side), backbone names
    with dashes included, and every one of its cells once with its planned digest."""
    from fewclip.plan import check_config, read_config

    overrides = {"data_root": str(fixture_root), "batch_cells": True}
    paper = check_config(read_config([REPO / "config" / "paper.yaml"], overrides))
    rc, out = snakemake("-n", "-p", "--configfile", REPO / "config" / "paper.yaml", "--config",
                        f"data_root={fixture_root}", "batch_cells=True", "--directory", tmp_path, timeout=300)
    assert rc == 0, out[-4000:]
    stats = job_stats(out)
    assert "fit" not in stats and "fit_gpu" not in stats
    assert stats["fit_batch_fewshot_ViT_B_32_images"] == 11 and stats["fit_batch_dg_ViT_B_16_images"] == 1
    assert stats["fit_batch_fewshot_ViT_B_16_images_k4"] == 11  # a run with its own K: KgCoOp's 4-shot one
    ran = _batched_cells(out, image_methods())
    assert ran == _planned(paper) and len(ran) == 2899
