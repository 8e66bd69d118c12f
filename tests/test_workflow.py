"""The Snakemake workflow as a user drives it: lint, config validation, the paper grid's plan,
a small real run, and several GPU jobs at once on one machine (the lock-file GPU pool)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO

from fewclip.paths import run_dir

DEFAULT_PROFILE = REPO / "workflow" / "profiles" / "default"


def snakemake(*args, cwd=REPO, env=None, timeout=300):
    """`snakemake ARGS` under `timeout -k`; returns (returncode, stdout+stderr)."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    cmd = ["timeout", "-k", "10", str(timeout), str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
           *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout + 30)
    return proc.returncode, proc.stdout + proc.stderr


def job_stats(out: str) -> dict[str, int]:
    """The `Job stats` table of a Snakemake run or dry run → {rule: count}."""
    table = out.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)\s*$", line)
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def write_config(path: Path, root: Path, **overrides) -> Path:
    cfg = {
        "data_root": str(root), "generate_data": "none", "preset": "clean", "seeds": [1], "device": "cpu",
        "views": 0, "templates": ["dataset"], "reports": False,
        "backbones": {"tiny": {"model": "fewclip-tiny-vit", "pretrained": "none"}},
        "protocols": {"fewshot": {"datasets": ["eurosat"], "shots": [1],
                                  "runs": [{"backbone": "tiny", "methods": ["zeroshot"]}]}},
    }
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_lint_is_clean():
    rc, out = snakemake("--lint", timeout=120)
    assert rc == 0 and "Lints for" not in out, out[-5000:]


BAD = [
    ({"dataroot": "x"}, "dataroot"),  # unknown key
    ({"seeds": "1"}, "seeds"),  # wrong type
    ({"device": "gpu"}, "device"),  # wrong value
    ({"protocols": {"fewshot": {"datasets": ["eurosat"], "shots": [1],
                                "runs": [{"backbone": "tiny", "methods": ["zeroshott"]}]}}}, "zeroshott"),
    ({"protocols": {"fewshot": {"datasets": ["eurosatt"], "shots": [1],
                                "runs": [{"backbone": "tiny", "methods": ["zeroshot"]}]}}}, "eurosatt"),
    ({"protocols": {"fewshot": {"datasets": ["eurosat"], "shots": [1],
                                "runs": [{"backbone": "RN5O", "methods": ["zeroshot"]}]}}},
     "protocols.fewshot.runs[0].backbone"),
]


@pytest.mark.parametrize("override,key", BAD, ids=[k for _, k in BAD])
def test_bad_config_stops_before_any_job_naming_the_key(tmp_path, fixture_root, override, key):
    cfg = write_config(tmp_path / "bad.yaml", fixture_root, **override)
    rc, out = snakemake("-n", "--configfile", cfg, "--directory", tmp_path / "work", timeout=120)
    assert rc != 0, out[-3000:]
    assert key in out, out[-3000:]
    assert "Job stats" not in out and not (tmp_path / "work" / "results").exists()
    if key == "zeroshott":  # the registered methods are listed, and how to add one
        from fewclip.methods import load_all

        assert "unknown method 'zeroshott'" in out and ", ".join(sorted(load_all())) in out and "FEWCLIP_PLUGINS" in out
    if key.endswith("backbone"):
        assert "allowed: tiny" in out


def test_a_config_that_still_sets_image_methods_is_told_what_replaced_it(tmp_path, fixture_root):
    """`image_methods` is gone (issue 23): a method's class declares `needs`. An old config gets one
    error naming the key and the fix, not the schema's "Additional properties are not allowed"."""
    cfg = write_config(tmp_path / "old.yaml", fixture_root, image_methods=["coop", "cocoop", "vpt", "vlp", "dpt"])
    rc, out = snakemake("-n", "--configfile", cfg, "--directory", tmp_path / "work", timeout=120)
    assert rc != 0, out[-3000:]
    assert "config key image_methods: no longer read" in out, out[-3000:]
    assert "drop it; a method's class declares needs" in out and "Additional properties" not in out
    assert "Job stats" not in out


# (mem_mb, runtime in minutes) of one cell, worked out by hand from the workflow's table before
# the methods declared their resources (METHOD_RESOURCES in common.smk: CoCoOp 24 000 MB / 480 min,
# CoOp 16 000 / 120, VPT 16 000 / 180, DPT 20 000 / 240, zero-shot 2 000 / 5, linear probe
# 4 000 / 10, Tip-Adapter-F 6 000 / 20; ImageNet ×2 memory ×4 time, SUN397/Food-101 ×2 time; an
# image-encoder method's time t becomes t·(1+K)//8 + t//2).
CELL_RESOURCES = [
    ("cocoop", "imagenet", 16, 48000, 5040),  # 1920·17//8 + 960
    ("coop", "oxford_flowers", 16, 16000, 315),  # 120·17//8 + 60
    ("dpt", "dtd", 16, 20000, 630),  # 240·17//8 + 120
    ("vpt", "sun397", 1, 16000, 270),  # 360·2//8 + 180
    ("coop", "imagenet", 1, 32000, 360),  # 480·2//8 + 240
    ("zeroshot", "dtd", 1, 2000, 5),
    ("zeroshot", "imagenet", 16, 4000, 20),
    ("linear_probe", "imagenet", 8, 8000, 40),
    ("tip_adapter_f", "food101", 4, 6000, 40),
]


@pytest.mark.parametrize("method,dataset,shots,mem_mb,minutes", CELL_RESOURCES,
                         ids=[f"{m}-{d}-{k}" for m, d, k, *_ in CELL_RESOURCES])
def test_cell_resources_are_the_workflow_numbers(method, dataset, shots, mem_mb, minutes):
    from fewclip.grid import cell_resources

    assert cell_resources(method, dataset, shots) == (mem_mb, minutes)


def test_a_method_that_declares_no_resources_gets_its_sides_defaults(monkeypatch):
    """A plugin without `resources`: 16 000 MB / 240 min for an image-encoder method, 4 000 / 15
    for a feature-level one (the workflow's defaults before issue 23), scaled the same way."""
    from fewclip.grid import cell_resources, image_methods
    from fewclip.methods import REGISTRY, Method, load_all

    load_all()

    class Images(Method):
        name, needs = "plain_images", "images"

    class Features(Method):
        name, needs = "plain_features", "features"

    monkeypatch.setitem(REGISTRY, "plain_images", Images)
    monkeypatch.setitem(REGISTRY, "plain_features", Features)
    assert cell_resources("plain_images", "dtd", 1) == (16000, 240 * 2 // 8 + 120)
    assert cell_resources("plain_images", "imagenet", 16) == (32000, 960 * 17 // 8 + 480)
    assert cell_resources("plain_features", "food101", 16) == (4000, 30)
    assert "plain_images" in image_methods() and "plain_features" not in image_methods()


def test_paper_config_plans_the_whole_grid(tmp_path, fixture_root):
    t0 = time.perf_counter()
    rc, out = snakemake("-n", "--quiet", "rules", "--configfile", REPO / "config" / "paper.yaml",
                        "--config", f"data_root={fixture_root}", "--directory", tmp_path, timeout=240)
    seconds = time.perf_counter() - t0
    assert rc == 0, out[-5000:]
    stats = job_stats(out)
    print(f"paper grid planned in {seconds:.1f} s: {stats}")
    # few-shot: 11 datasets x (5 RN50 + 6 ViT-B-32 methods) x 5 shots x 3 seeds = 1815, + zero-shot
    # once per (backbone, dataset) = 22 (its class declares uses_fewshot_sample = False);
    # base-to-new: 11 x 6 x 3 + 11 = 209; DG: 6 x 3 + 1 = 19 -> 2065 cells (2397 with zero-shot
    # at every K and seed); KgCoOp (ViT-B-16): 4-shot few-shot and base-to-new, 11 x 3 each;
    # image-encoder methods on the GPU.
    assert stats["fit"] + stats["fit_gpu"] == 2899
    # few-shot coop (RN50) and coop/cocoop/vpt/vlp/dpt (ViT-B-32); base-to-new and DG: coop, cocoop; kgcoop
    from fewclip.methods import image_methods
    from fewclip.plan import check_config, plan, read_config

    paper = plan(check_config(read_config([str(REPO / "config" / "paper.yaml")])))
    assert stats["fit_gpu"] == sum(1 for p in paper if p.cell.method in image_methods())
    assert stats["split"] == 11 * 5 * 3  # base-to-new and DG reuse the 16-shot manifests
    assert stats["encode"] == 11 * 3 + 4  # every (backbone, dataset) once + the DG targets (ViT-B-16)


def test_config_values_reach_the_shell_quoted(tmp_path, fixture_root):
    evil = tmp_path / "data $(touch PWNED); x"
    evil.symlink_to(fixture_root, target_is_directory=True)
    cfg = write_config(tmp_path / "c.yaml", evil)
    rc, out = snakemake("-n", "-p", "--configfile", cfg, "--directory", tmp_path / "work", timeout=120)
    assert rc == 0, out[-3000:]
    assert f"--data-root '{evil}'" in out
    assert not list(tmp_path.rglob("PWNED"))


def test_zeroshot_grid_runs_through_snakemake(tmp_path, fixture_root):
    """fewshot + base-to-new (eval_new) + DG (eval_* of the 4 targets), 1 shot, 1 seed."""
    cfg = write_config(
        tmp_path / "c.yaml", fixture_root,
        protocols={
            "fewshot": {"datasets": ["eurosat"], "shots": [1], "runs": [{"backbone": "tiny", "methods": ["zeroshot"]}]},
            "base2new": {"datasets": ["eurosat"], "shots": 1, "runs": [{"backbone": "tiny", "methods": ["zeroshot"]}]},
            "dg": {"source": "imagenet", "targets": ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"],
                   "shots": 1, "runs": [{"backbone": "tiny", "methods": ["zeroshot"]}]},
        })
    work = tmp_path / "work"
    rc, out = snakemake("--workflow-profile", DEFAULT_PROFILE, "--cores", "2", "--configfile", cfg,
                        "--directory", work, timeout=400)
    assert rc == 0, out[-5000:]
    runs = work / "results" / "runs"
    expected = [
        "fewshot/tiny/eurosat/zeroshot/1shot/seed1/metrics.json",
        "base2new/tiny/eurosat/zeroshot/1shot/seed1/metrics.json",
        "base2new/tiny/eurosat/zeroshot/1shot/seed1/eval_new/metrics.json",
        "dg/tiny/imagenet/zeroshot/1shot/seed1/metrics.json",
        *(f"dg/tiny/imagenet/zeroshot/1shot/seed1/eval_{t}/metrics.json"
          for t in ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")),
    ]
    for rel in expected:
        m = json.loads((runs / rel).read_text())
        assert m["method"] == "zeroshot" and m["status"] == "complete", rel
    stats = job_stats(out)
    assert stats["fit"] == 3 and "fit_gpu" not in stats  # CPU config: no job holds a GPU
    for bench in ("split", "encode", "fit"):
        assert list((work / "benchmarks" / bench).rglob("*.tsv")), bench


# ------------------------------------------------------------------ GPU pool (fake device ids)

HOLDER = """
import json, os, sys, time
from fewclip.gpus import claim
c = claim("auto")
t0 = time.time()
time.sleep(float(sys.argv[1]))
print(json.dumps({"gpu": os.environ["CUDA_VISIBLE_DEVICES"], "claimed": c.gpu, "start": t0, "end": time.time()}))
"""


def test_gpu_pool_gives_each_concurrent_job_its_own_device(tmp_path):
    env = {**os.environ, "FEWCLIP_GPUS": "0,1", "FEWCLIP_GPU_POOL": str(tmp_path / "pool")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, "1.5"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert "claimed from the pool" in err
        results.append(json.loads(out))
    assert len(results) == 3 and {r["gpu"] for r in results} <= {"0", "1"}
    assert all(r["gpu"] == r["claimed"] for r in results)
    for i, a in enumerate(results):  # never two holders of one id at once
        for b in results[i + 1:]:
            if a["gpu"] == b["gpu"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"], (a, b)
    # Two ran together, the third waited for a free device.
    assert max(r["end"] for r in results) - min(r["start"] for r in results) >= 2.9


def test_gpu_pool_leaves_cpu_and_slurm_jobs_alone(tmp_path):
    code = "import os; from fewclip.gpus import claim; c = claim({dev!r}); print(c.gpu, os.environ.get('CUDA_VISIBLE_DEVICES'))"
    base = {**os.environ, "FEWCLIP_GPU_POOL": str(tmp_path / "pool")}
    base.pop("CUDA_VISIBLE_DEVICES", None)
    base.pop("FEWCLIP_GPUS", None)
    cases = [
        ("cpu", {"FEWCLIP_GPUS": "0,1"}, {("None", "None")}),  # --device cpu: no device claimed
        ("cuda:1", {"FEWCLIP_GPUS": "0,1"}, {("None", "None")}),  # the user pinned a device
        ("auto", {"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "3"}, {("None", "3")}),  # SLURM assigned it
        ("auto", {"CUDA_VISIBLE_DEVICES": "5,6"}, {("5", "5"), ("6", "6")}),  # the pool picks within the set
    ]
    for dev, extra, allowed in cases:
        out = subprocess.run([sys.executable, "-c", code.format(dev=dev)], env={**base, **extra},
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert tuple(out.stdout.split()) in allowed, (dev, extra, out.stdout)


def test_snakemake_runs_gpu_jobs_side_by_side_on_distinct_devices(tmp_path, fixture_root):
    """`--resources gpu=2` with 2 fake GPUs: the cells of an image-encoder method (CoOp, one epoch;
    device auto: no CUDA, so they compute on the CPU) are `fit_gpu` jobs and each get a device id
    from the pool."""
    runs = [{"backbone": "tiny", "methods": ["coop"]}]
    cfg = write_config(tmp_path / "c.yaml", fixture_root, device="auto", seeds=[1, 2, 3],
                       method_params={"coop": {"epochs": 1}},
                       protocols={"fewshot": {"datasets": ["eurosat"], "shots": [1], "runs": runs}})
    work = tmp_path / "work"
    rc, out = snakemake("--workflow-profile", DEFAULT_PROFILE, "--cores", "2", "--resources", "gpu=2",
                        "--configfile", cfg, "--directory", work, timeout=400,
                        env={"FEWCLIP_GPUS": "0,1", "FEWCLIP_GPU_POOL": str(tmp_path / "pool")})
    assert rc == 0, out[-5000:]
    stats = job_stats(out)
    assert stats["fit_gpu"] == 3 and "fit" not in stats
    devices = []
    for seed in (1, 2, 3):
        run = work / run_dir("fewshot", "tiny", "eurosat", "coop", 1, seed)
        m = json.loads((run / "metrics.json").read_text())
        assert m["status"] == "complete" and m["epochs"] == 1
        devices.append(m["provenance"]["cuda_visible_devices"])
        log = (work / f"logs/fit/fewshot/tiny/eurosat/coop/1shot_seed{seed}.log").read_text()
        assert f"GPU {devices[-1]} claimed from the pool" in log
    assert set(devices) <= {"0", "1"}
