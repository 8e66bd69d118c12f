"""Every built-in method through the Snakemake grid on a fixture (one job per cell), and the cells
batched into one process per (protocol, backbone, dataset) and side give the same results."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from conftest import BIN, REPO

from fewclip.methods import load_all

REGISTRY = load_all()
METHODS = sorted(n for n, c in REGISTRY.items() if c.__module__.startswith("fewclip.methods."))  # the built-ins
TRAINED = [m for m in METHODS if REGISTRY[m].trains]


def _run(workdir: Path, data: Path, batch: bool) -> dict:
    cfg = workdir / "cfg.yaml"
    workdir.mkdir()
    cfg.write_text(yaml.safe_dump({
        "data_root": str(data), "generate_data": "none", "seeds": [1], "device": "cpu", "views": 10,
        "templates": ["dataset"], "reports": False, "batch_cells": batch,
        "backbones": {"tiny": {"model": "fewclip-tiny-vit", "pretrained": "none"}},
        "method_params": {m: {"epochs": 1} for m in TRAINED}
        | {"cocoop": {"epochs": 1, "batch_size": 4}, "vlp": {"epochs": 1, "guidance_epochs": 1},
           "dpt": {"epochs": 1, "guidance_epochs": 1}},
        "protocols": {"fewshot": {"datasets": ["eurosat"], "shots": [2],
                                  "runs": [{"backbone": "tiny", "methods": METHODS}]}},
    }))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["timeout", "-k", "10", "900", str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(workdir), "--configfile", str(cfg), "--cores", "2", "--quiet"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = {}
    for m in METHODS:
        metrics = json.loads((workdir / f"results/runs/fewshot/tiny/eurosat/{m}/2shot/seed1/metrics.json").read_text())
        out[m] = metrics
    return out


def test_every_method_runs_in_the_snakemake_grid(tmp_path, fixture_root):
    per_cell = _run(tmp_path / "cells", fixture_root, batch=False)
    for m, metrics in per_cell.items():
        assert metrics["status"] == "complete" and metrics["method"] == m and metrics["top1"] is not None
        if m in TRAINED:
            assert metrics["epochs"] == 1 and metrics["trainable_params"] > 0
    batched = _run(tmp_path / "batched", fixture_root, batch=True)
    for m in METHODS:  # the tiny random model's top-1 is coarse: the training loss is the sharp check
        assert batched[m]["top1"] == per_cell[m]["top1"], m
        assert batched[m]["hparams"] == per_cell[m]["hparams"], m
        assert batched[m].get("train") == per_cell[m].get("train"), m
