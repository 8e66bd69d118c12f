"""Synthetic run directories for the analysis tests (imported by the other test_analysis_* files)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from fewclip.grid import expand_grid

BACKBONES = {"rn50": {"model": "RN50", "pretrained": "openai"}, "vitb16": {"model": "ViT-B-16", "pretrained": "openai"}}
BASE_ACC = {"zeroshot": 0.55, "linear_probe": 0.45, "coop": 0.62, "cocoop": 0.64, "tip_adapter": 0.60}


def grid_config(seeds=(1, 2, 3)) -> dict:
    return {
        "seeds": list(seeds),
        "preset": "clean",
        "backbones": BACKBONES,
        "baselines": ["zeroshot", "coop"],
        "protocols": {
            "fewshot": {"datasets": ["imagenet", "dtd", "eurosat"], "shots": [1, 2, 4],
                        "runs": [{"backbone": "rn50", "methods": ["zeroshot", "linear_probe", "coop", "tip_adapter"]}]},
            "base2new": {"datasets": ["dtd", "eurosat"], "shots": 16,
                         "runs": [{"backbone": "vitb16", "methods": ["zeroshot", "coop", "cocoop", "linear_probe"]}]},
            "dg": {"source": "imagenet", "targets": ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"],
                   "shots": 16, "runs": [{"backbone": "vitb16", "methods": ["zeroshot", "coop"]}]},
        },
    }


def _accuracy(method: str, shots: int, dataset: str, seed: int, split: str) -> float:
    acc = BASE_ACC.get(method, 0.5)
    if method not in ("zeroshot",):
        acc += 0.02 * np.log2(max(shots, 1))
    acc += {"imagenet": 0.0, "dtd": -0.1, "eurosat": -0.05}.get(dataset, -0.08)
    if split == "new":
        acc -= 0.08
    return float(np.clip(acc, 0.05, 0.95))


def _write_eval(folder: Path, cell, config, eval_dataset: str, split: str, n_test: int, overrides: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    backbone = config["backbones"][cell.backbone]
    # Zero-shot is deterministic: identical predictions for every seed.
    key = (cell.protocol, cell.dataset, eval_dataset, split, cell.method, cell.shots, 0 if cell.method == "zeroshot" else cell.seed)
    rng = np.random.default_rng(zlib.crc32(repr(key).encode()))
    top1 = None
    na_reason = None
    if cell.method == "linear_probe" and split == "new":
        na_reason = "linear probe has no classifier for unseen classes"
    else:
        p = _accuracy(cell.method, cell.shots, eval_dataset, cell.seed, split)
        correct = rng.random(n_test) < p
        labels = rng.integers(0, 10, n_test)
        preds = np.where(correct, labels, (labels + 1) % 10)
        pd.DataFrame({"path": [f"img/{i:04d}.jpg" for i in range(n_test)], "label": labels, "pred": preds,
                      "correct": correct}).to_parquet(folder / "predictions.parquet", index=False)
        top1 = 100.0 * correct.mean()
    metrics = {
        "protocol": cell.protocol, "preset": config["preset"], "backbone": backbone["model"], "backbone_key": cell.backbone,
        "pretrained": backbone["pretrained"], "dataset": cell.dataset, "eval_dataset": eval_dataset, "eval_split": split,
        "method": cell.method, "shots": cell.shots, "seed": cell.seed, "top1": top1, "n_test": n_test, "n_classes": 10,
        "trainable_params": 0 if cell.method in ("zeroshot", "tip_adapter") else 8192, "epochs": 0 if cell.method == "zeroshot" else 50,
        "train_seconds": 0.0 if cell.method == "zeroshot" else 12.5, "eval_seconds": 0.6, "peak_mem_mb": 512.0,
        "hparams": {"lr": 0.002} if cell.method == "coop" else {},
        "provenance": {"fewclip_version": "0.1.0", "git_commit": "abc", "config_hash": "cfg",
                       "manifest_sha256": f"m-{cell.protocol}-{cell.dataset}-{cell.shots}-{cell.seed}",
                       "backbone_sha256": "b", "torch": "2", "open_clip": "2", "device": "cpu"},
    }
    if na_reason:
        metrics["na_reason"] = na_reason
    metrics.update(overrides)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def make_runs(root: Path, config: dict | None = None, n_test: int = 60, skip=(), overrides=None) -> Path:
    """Write every cell of `config` under root/results/runs; `skip` = set of (method, dataset, shots, seed) left unrun."""
    config = config or grid_config()
    runs = Path(root) / "results" / "runs"
    for cell in expand_grid(config):
        if (cell.method, cell.dataset, cell.shots, cell.seed) in skip:
            continue
        base = runs / Path(cell.run_dir).relative_to("results/runs")
        split = "base" if cell.protocol == "base2new" else "test"
        extra = (overrides or {}).get((cell.protocol, cell.method, cell.dataset, cell.shots, cell.seed), {})
        _write_eval(base, cell, config, cell.dataset, split, n_test, extra)
        for target in cell.evals:
            if cell.protocol == "base2new":
                _write_eval(base / "eval_new", cell, config, cell.dataset, "new", n_test, {})
            else:
                _write_eval(base / f"eval_{target}", cell, config, target, "test", n_test, {})
    return runs


def test_fixture_writes_every_cell(tmp_path):
    runs = make_runs(tmp_path)
    cells = expand_grid(grid_config())
    assert len(list(runs.rglob("metrics.json"))) == sum(1 + len(c.evals) for c in cells)
