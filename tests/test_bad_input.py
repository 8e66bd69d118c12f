"""Bad inputs end in one clear error with no partial output; NaN losses, foreign
checkpoints and full disks are handled; runs are deterministic; loading is safe."""

import errno
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import REPO, fewclip
from fewclip.engine.run import RunSpec, run_cell
from fewclip.engine.train import TrainConfig, train
from fewclip.errors import FewclipError
from fewclip.io import write_json
from fewclip.methods import Method

TINY = "fewclip-tiny-vit"


class Toy(Method):
    name = "toy"
    trains = True

    def __init__(self, nan_at_epoch=None):
        super().__init__({})
        self.w = torch.nn.Parameter(torch.ones(3))
        self.nan_at_epoch = nan_at_epoch

    def loss(self, batch, epoch):
        loss = (self.w * batch).pow(2).sum()
        return loss * float("nan") if epoch == self.nan_at_epoch else loss


def _batches(epoch):
    return [torch.ones(3) * (1 + epoch)]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "train_state.pt"
    cfg = TrainConfig(epochs=4, lr=0.01, identity={"method": "toy"})
    method = Toy(nan_at_epoch=2)
    with pytest.raises(FewclipError, match=r"loss became nan at epoch 3.*last good checkpoint is kept"):
        train(method, _batches, cfg, torch.device("cpu"), ckpt)
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1 and torch.isfinite(state["method"]["w"]).all()


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    ckpt = tmp_path / "train_state.pt"
    train(Toy(), _batches, TrainConfig(epochs=1, lr=0.01, identity={"method": "toy", "backbone": "RN50"}),
          torch.device("cpu"), ckpt)
    ckpt_again = TrainConfig(epochs=3, lr=0.01, identity={"method": "toy", "backbone": "ViT-B-16"})
    with pytest.raises(FewclipError, match="belongs to another run.*delete it"):
        train(Toy(), _batches, ckpt_again, torch.device("cpu"), ckpt)


def test_disk_full_during_a_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "run" / "metrics.json"

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(FewclipError, match="disk full while writing .*metrics.json"):
        write_json(target, {"top1": 1.0})
    assert list((tmp_path / "run").iterdir()) == []


def _strip_timings(m):
    m = dict(m)
    for key in ("train_seconds", "eval_seconds", "peak_mem_mb"):
        m.pop(key)
    return m


@pytest.mark.parametrize("method", ["clip_adapter", "tip_adapter_f", "linear_probe"])
def test_same_config_twice_gives_identical_results(fixture_root, tmp_path, method):
    out = []
    for i in range(2):
        run = tmp_path / f"run{i}"
        m = run_cell(RunSpec(str(fixture_root), "oxford_pets", method, TINY, str(run), 2, 1, pretrained="none",
                             features=str(tmp_path / f"feat{i}"), overrides={"epochs": 3} if method != "linear_probe" else {}))
        out.append((_strip_timings(m), pd.read_parquet(run / "predictions.parquet")))
    assert out[0][0] == out[1][0]
    pd.testing.assert_frame_equal(out[0][1], out[1][1])


def test_shots_larger_than_a_class_keep_all_and_are_recorded(fixture_root, tmp_path):
    with pytest.warns(UserWarning, match="fewer than"):
        m = run_cell(RunSpec(str(fixture_root), "dtd", "zeroshot", TINY, str(tmp_path / "r"), 16, 1,
                             pretrained="none", features=str(tmp_path / "f")))
    assert m["short_classes"] and all(int(n) < 16 for n in m["short_classes"].values())


def test_every_torch_load_is_weights_only():
    """Checkpoints and feature files never unpickle arbitrary objects."""
    calls = []
    for path in (REPO / "src").rglob("*.py"):
        for match in re.finditer(r"torch\.load\(([^)]*)\)", path.read_text()):
            calls.append((path.name, match.group(1)))
    assert calls, "expected torch.load calls in the package"
    unsafe = [c for c in calls if "weights_only=True" not in c[1]]
    assert not unsafe, unsafe


def test_config_values_cannot_inject_into_shell_commands(tmp_path):
    """A hostile data_root reaches `fewclip` as one quoted argument, never as shell syntax."""
    import subprocess
    import sys

    marker = tmp_path / "pwned"
    evil = f"data; touch {marker}; echo $(touch {marker})"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({
        "data_root": evil, "seeds": [1], "device": "cpu", "reports": False,
        "backbones": {"tiny": {"model": TINY, "pretrained": "none"}},
        "protocols": {"fewshot": {"datasets": ["dtd"], "shots": [1], "runs": [{"backbone": "tiny", "methods": ["zeroshot"]}]}},
    }))
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run([str(bin_dir / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(cfg), "--cores", "1", "--printshellcmds", "--forceall",
                           "results/splits/dtd/clean/1shot_seed1.json", "--config", "generate_data=none"],
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert not marker.exists()
    assert "'data; touch" in proc.stdout + proc.stderr


def test_missing_data_root_and_missing_dataset_folder(tmp_path):
    common = ["--method", "zeroshot", "--backbone", TINY, "--pretrained", "none", "--shots", 1, "--seed", 1,
              "--device", "cpu", "--features", tmp_path / "f"]
    proc = fewclip("run", "--data-root", tmp_path / "nowhere", "--dataset", "dtd", "--out", tmp_path / "a", *common)
    assert proc.returncode == 2 and "data root" in proc.stderr and "does not exist" in proc.stderr
    (tmp_path / "root").mkdir()
    proc = fewclip("run", "--data-root", tmp_path / "root", "--dataset", "dtd", "--out", tmp_path / "b", *common)
    assert proc.returncode == 2 and "split_zhou_DescribableTextures.json" in proc.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
