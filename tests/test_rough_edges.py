"""What is counted is what it claims to be, and the last rough errors are one clear line:
a result copied into another cell's folder, a split listing an image twice, a plugin that is not
installed, a corrupt image read by a loader worker, a scalar where the grid wants a list, and a
CLIP-Adapter cell with no few-shot val split (refused before training; a failed run's leftovers
never block the corrected rerun)."""

import json
import shutil
import warnings

import pytest
import torch
from test_analysis_fixtures import BACKBONES, make_runs

from conftest import fewclip, refused
from fewclip.data.datasets import get_spec, load_dataset
from fewclip.data.fewshot import make_manifest
from fewclip.data.fixtures import write_fixture
from fewclip.engine.run import RunSpec, run_cell
from fewclip.methods import get_method

TINY = "fewclip-tiny-vit"


def small_grid(shots=(1,)) -> dict:
    return {
        "seeds": [1, 2], "preset": "clean", "backbones": BACKBONES,
        "protocols": {
            "fewshot": {"datasets": ["dtd"], "shots": list(shots),
                        "runs": [{"backbone": "rn50", "methods": ["coop"]}]},
            "dg": {"source": "imagenet", "targets": ["imagenet_a", "imagenet_r"], "shots": 1,
                   "runs": [{"backbone": "vitb16", "methods": ["coop"]}]},
        },
    }


# ------------------------------------------------------------------ what collect counts


def test_a_result_copied_into_another_cells_folder_is_refused_not_refiled(tmp_path, cli):
    runs = make_runs(tmp_path, small_grid(), n_test=8)
    out = tmp_path / "all_runs.parquet"
    assert cli("collect", "--runs", runs, "--out", out).returncode == 0
    out.unlink()

    cell = runs / "fewshot/rn50/dtd/coop/1shot"
    shutil.copy(cell / "seed1/metrics.json", cell / "seed2/metrics.json")
    line = refused(cli("collect", "--runs", runs, "--out", out), str(cell / "seed2/metrics.json"),
                   "seed=1", "seed=2", "move")
    assert "records" in line
    assert not out.exists()


def test_an_evaluation_copied_into_another_targets_folder_is_refused(tmp_path, cli):
    runs = make_runs(tmp_path, small_grid(), n_test=8)
    cell = runs / "dg/vitb16/imagenet/coop/1shot/seed1"
    shutil.copy(cell / "eval_imagenet_a/metrics.json", cell / "eval_imagenet_r/metrics.json")
    out = tmp_path / "all_runs.parquet"
    refused(cli("collect", "--runs", runs, "--out", out), str(cell / "eval_imagenet_r/metrics.json"),
            "eval_dataset=imagenet_a", "eval_dataset=imagenet_r")
    assert not out.exists()


def test_an_image_listed_twice_in_one_class_is_sampled_once_and_recorded(tmp_path):
    root = tmp_path / "data"
    write_fixture("dtd", root, n_classes=2, n_train=3, n_val=1, n_test=1)
    clean = make_manifest(load_dataset("dtd", root), 4, 1)
    assert "duplicate_images" not in clean
    spec = get_spec("dtd")
    split_file = root / spec.folder / spec.split_file
    split = json.loads(split_file.read_text())
    twice = next(row for row in split["train"] if row[1] == 0)
    split["train"].append(list(twice))
    split_file.write_text(json.dumps(split))

    ds = load_dataset("dtd", root)
    with pytest.warns(UserWarning, match="more than once"):
        manifest = make_manifest(ds, 4, 1)
    paths = [p for p, _ in manifest["train"]]
    assert len(paths) == len(set(paths)) == 6  # 3 images per class, each once
    repeated = f"{spec.folder}/{spec.image_dir}/{twice[0]}"
    assert manifest["duplicate_images"] == {"train": {"0": [repeated]}}
    assert manifest["short_classes"] == {"0": 3, "1": 3}


# ------------------------------------------------------------------ the last rough errors


def test_a_plugin_module_that_is_not_installed_is_one_clear_error():
    proc = fewclip("methods", env={"FEWCLIP_PLUGINS": "fewclip_no_such_plugin"})
    line = refused(proc, "FEWCLIP_PLUGINS", "fewclip_no_such_plugin", "not installed", ".py")
    assert "importlib" not in line


@pytest.mark.parametrize("method", ["zeroshot", "coop"])
def test_a_corrupt_image_read_in_a_loader_worker_is_the_same_one_line(tmp_path, cli, method):
    root = tmp_path / "data"
    write_fixture("dtd", root, n_classes=2, n_train=2, n_val=1, n_test=2)
    ds = load_dataset("dtd", root)
    bad = ds.abspath(ds.test[0])
    bad.write_bytes(bad.read_bytes()[:40])
    out = tmp_path / "run"
    proc = cli("run", "--data-root", root, "--dataset", "dtd", "--method", method, "--backbone", TINY,
               "--pretrained", "none", "--shots", 1, "--seed", 1, "--out", out, "--features", tmp_path / "feat",
               "--device", "cpu", "--workers", 1, *(["--set", "epochs=1"] if method == "coop" else []))
    line = refused(proc, f"cannot read image {bad}", "re-copy the file")
    assert "DataLoader" not in proc.stderr and "Original" not in proc.stderr
    assert line.rstrip().endswith("remove it from the split")
    assert not (out / "metrics.json").exists()


def test_collect_refuses_a_scalar_where_the_grid_wants_a_list(tmp_path, cli):
    runs = make_runs(tmp_path, small_grid(shots=[4]), n_test=8)
    config = small_grid()
    config["protocols"]["fewshot"]["shots"] = 4
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(json.dumps(config))
    out = tmp_path / "all_runs.parquet"
    refused(cli("collect", "--runs", runs, "--config", cfg, "--out", out), str(cfg), "protocols.fewshot.shots",
            "array")
    assert not out.exists()


def test_clip_adapter_without_a_val_split_is_refused_before_training_and_the_fix_runs(tmp_path, cli):
    root = tmp_path / "data"
    write_fixture("dtd", root, n_classes=2, n_train=2, n_val=0, n_test=2)
    out = tmp_path / "run"
    args = ["run", "--data-root", root, "--dataset", "dtd", "--method", "clip_adapter", "--backbone", TINY,
            "--pretrained", "none", "--shots", 1, "--seed", 1, "--out", out, "--features", tmp_path / "feat",
            "--device", "cpu", "--set", "epochs=1", "--set", "views=1"]
    refused(cli(*args), "clip_adapter", "few-shot val split is empty", "--set select_ratio=false")
    assert not (out / "train_state.pt").exists() and not (out / "metrics.json").exists()

    proc = cli(*args, "--set", "select_ratio=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selected"]["ratio_selected_on"] == "fixed"


class Killed(Exception):
    """Stands for a run that dies after its first epoch's training state was written."""


def test_a_failed_runs_training_state_never_blocks_the_corrected_rerun(tmp_path, monkeypatch, capsys,
                                                                        one_torch_thread):
    root = tmp_path / "data"
    write_fixture("oxford_pets", root, n_classes=3, n_train=4, n_val=2, n_test=2)

    def spec(**overrides):
        return RunSpec(data_root=str(root), dataset="oxford_pets", method="clip_adapter", backbone=TINY,
                       pretrained="none", out=str(tmp_path / "run"), shots=2, seed=1,
                       overrides={"epochs": 3, "views": 1, **overrides}, features=str(tmp_path / "features"))

    def die(self, task, epoch):
        if epoch == 1:
            raise Killed

    cls = get_method("clip_adapter")
    monkeypatch.setattr(cls, "epoch_end", die, raising=False)
    with warnings.catch_warnings(), pytest.raises(Killed):
        warnings.simplefilter("ignore")
        run_cell(spec(lr=0.5))
    state = tmp_path / "run" / "train_state.pt"
    assert torch.load(state, weights_only=True)["epoch"] == 0
    monkeypatch.delattr(cls, "epoch_end")

    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = run_cell(spec(lr=0.01))  # the fix: other hyper-parameters, the same cell and --out
    assert metrics["train"]["resumed_from"] == 0 and metrics["hparams"]["lr"] == 0.01
    assert f"discarding {state}" in capsys.readouterr().err
    assert not state.exists() and (tmp_path / "run" / "metrics.json").is_file()
