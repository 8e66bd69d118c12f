"""After a change to a grid's inputs, Snakemake re-runs exactly the jobs whose outputs depend on
it, and what the results record (store.json, each cell's provenance) names what was computed.

One small real grid (dtd, 1 shot, 1 seed; zero-shot, CLIP-Adapter, which reads the stored views,
and CoOp, which trains through the encoders), changed step by step as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from conftest import BIN, REPO

TINY = "fewclip-tiny-vit"
METHODS = ["zeroshot", "clip_adapter", "coop"]
RUN = "results/runs/fewshot/tiny/dtd/{}/1shot/seed1/metrics.json"
OUTPUTS = {**{m: RUN.format(m) for m in METHODS},
           "store": "results/features/tiny/dtd/store.json", "views": "results/features/tiny/dtd/views.json"}


def _weights(path: Path, shift: float) -> str:
    """A local checkpoint of the tiny model: its random init moved by `shift` (other content)."""
    from fewclip.models.backbone import load_backbone

    model = load_backbone(TINY, "none", "cpu").model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(shift)
    torch.save(model.state_dict(), path)
    return str(path)


def _sha(path) -> str:
    from fewclip.io import sha256_file

    return sha256_file(path)


class Grid:
    def __init__(self, work: Path, data: Path, weights: str):
        self.work, self.cfg = work, work / "config.yaml"
        work.mkdir()
        self.config = {
            "data_root": str(data), "seeds": [1], "device": "cpu", "views": 2, "templates": ["dataset"],
            "reports": False,
            "backbones": {"tiny": {"model": TINY, "pretrained": weights}},
            "method_params": {"clip_adapter": {"epochs": 2, "views": 2}, "coop": {"epochs": 1}},
            "protocols": {"fewshot": {"datasets": ["dtd"], "shots": [1],
                                      "runs": [{"backbone": "tiny", "methods": METHODS}]}},
        }

    def run(self) -> set[str]:
        """Run the grid; returns the outputs (OUTPUTS keys) that were written again."""
        before = self.mtimes()
        self.cfg.write_text(yaml.safe_dump(self.config))
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        proc = subprocess.run([str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory",
                               str(self.work), "--configfile", str(self.cfg), "--cores", "2"],
                              env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        after = self.mtimes()
        assert set(after) == set(OUTPUTS), "a finished output is missing"
        return {k for k in after if after[k] != before.get(k)}

    def mtimes(self) -> dict:
        return {k: (self.work / p).stat().st_mtime_ns for k, p in OUTPUTS.items() if (self.work / p).exists()}

    def metrics(self, method: str) -> dict:
        return json.loads((self.work / RUN.format(method)).read_text())

    def store(self, name="store.json") -> dict:
        return json.loads((self.work / "results/features/tiny/dtd" / name).read_text())


@pytest.fixture(scope="module")
def grid(tmp_path_factory, fixture_root):
    from fewclip.data.datasets import get_spec

    tmp = tmp_path_factory.mktemp("invalidation")
    folder = get_spec("dtd").folder
    shutil.copytree(fixture_root / folder, tmp / "data" / folder)  # a data root of its own (its split file changes)
    g = Grid(tmp / "work", tmp / "data", _weights(tmp / "a.pt", 0.01))
    assert g.run() == set(OUTPUTS)
    return g


def test_one_methods_params_rerun_only_its_cells(grid):
    grid.config["method_params"]["clip_adapter"]["epochs"] = 3
    assert grid.run() == {"clip_adapter"}
    assert grid.metrics("clip_adapter")["hparams"]["epochs"] == 3


def test_more_views_rebuild_the_views_and_rerun_only_their_readers(grid):
    grid.config["views"] = 3
    grid.config["method_params"]["clip_adapter"]["views"] = 3
    assert grid.run() == {"views", "clip_adapter"}
    stored = torch.load(grid.work / "results/features/tiny/dtd/views.pt", weights_only=True)
    assert stored["features"].shape[0] == 3 and grid.store("views.json")["views"] == 3
    assert grid.metrics("clip_adapter")["hparams"]["views"] == 3


def test_more_views_than_stored_are_refused_before_any_job(grid):
    """A cell that would read more views than the store holds fails at planning, naming the key;
    no finished cell is deleted on the way."""
    grid.config["method_params"]["clip_adapter"]["views"] = 4
    grid.cfg.write_text(yaml.safe_dump(grid.config))
    before = grid.mtimes()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory",
                           str(grid.work), "--configfile", str(grid.cfg), "--cores", "2"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "config key views" in proc.stderr and "clip_adapter" in proc.stderr
    assert grid.mtimes() == before
    grid.config["method_params"]["clip_adapter"]["views"] = 3


def _check_weights_everywhere(grid, weights: str):
    sha = _sha(weights)
    assert grid.store()["sha256"] == sha and grid.store()["source"]["weights"] == "sha256:" + sha
    assert grid.store("views.json")["source"]["weights"] == "sha256:" + sha
    for m in METHODS:
        assert grid.metrics(m)["provenance"]["backbone_sha256"] == sha, m


def test_weights_overwritten_in_place_rerun_everything(grid):
    weights = grid.config["backbones"]["tiny"]["pretrained"]
    _check_weights_everywhere(grid, weights)
    old = grid.metrics("zeroshot")["top1"], grid.metrics("zeroshot")["provenance"]["backbone_sha256"]
    stat = os.stat(weights)
    _weights(Path(weights), 0.03)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its old mtime (cp -p, rsync -t)
    assert grid.run() == set(OUTPUTS)
    _check_weights_everywhere(grid, weights)
    assert grid.metrics("zeroshot")["provenance"]["backbone_sha256"] != old[1]


def test_other_weights_file_reruns_everything(grid, tmp_path):
    other = shutil.copy(grid.config["backbones"]["tiny"]["pretrained"], tmp_path / "b.pt")
    _weights(Path(other), -0.02)
    grid.config["backbones"]["tiny"]["pretrained"] = str(other)
    assert grid.run() == set(OUTPUTS)
    _check_weights_everywhere(grid, str(other))
    assert grid.run() == set()  # nothing changed since: nothing runs (every job's params are stable)


def test_an_edited_split_file_reruns_its_splits_stores_and_cells(grid):
    from fewclip.data.datasets import get_spec

    spec = get_spec("dtd")
    path = Path(grid.config["data_root"]) / spec.folder / spec.split_file
    split = json.loads(path.read_text())
    n_test = grid.metrics("zeroshot")["n_test"]
    assert n_test == len(split["test"])
    split["test"] = split["test"][:-1]
    path.write_text(json.dumps(split))
    assert grid.run() == set(OUTPUTS)
    for m in METHODS:
        assert grid.metrics(m)["n_test"] == n_test - 1, m
