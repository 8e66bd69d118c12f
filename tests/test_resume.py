"""A prompt-method run killed after its first epoch resumes from train_state.pt and ends with
the same metrics, predictions and learned state as an uninterrupted run (CPU, same seed)."""

import json
import warnings

import pandas as pd
import pytest
import torch

from fewclip.data.fixtures import write_fixture
from fewclip.engine.run import RunSpec, run_cell
from fewclip.methods import get_method

TIMINGS = {"train_seconds", "eval_seconds", "peak_mem_mb", "provenance", "train"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Killed(Exception):
    """Stands for the process dying between an epoch's end and its checkpoint."""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_fixture("oxford_pets", root, n_classes=3, n_train=4, n_val=2, n_test=2)
    return root


def _spec(root, tmp_path, method, out):
    return RunSpec(data_root=str(root), dataset="oxford_pets", method=method, backbone="fewclip-tiny-vit",
                   pretrained="none", out=str(tmp_path / out), shots=2, seed=1,
                   overrides={"epochs": 3, "batch_size": 2}, features=str(tmp_path / "features"))


def _run(spec):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_cell(spec)


@pytest.mark.parametrize("method", ["coop", "dpt"])
def test_killed_run_resumes_to_the_same_result(data_root, tmp_path, monkeypatch, method):
    cls = get_method(method)
    reference = _run(_spec(data_root, tmp_path, method, "uninterrupted"))

    # first attempt: dies in epoch 2, after epoch 1's checkpoint was written
    def die(self, task, epoch):
        if epoch == 1:
            raise Killed

    monkeypatch.setattr(cls, "epoch_end", die, raising=False)
    spec = _spec(data_root, tmp_path, method, "resumed")
    with pytest.raises(Killed):
        _run(spec)
    out = tmp_path / "resumed"
    assert (out / "train_state.pt").is_file() and not (out / "metrics.json").exists()
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["epoch"] == 0
    assert set(state["method"]) == set(torch.load(tmp_path / "uninterrupted" / "checkpoint.pt",
                                                  weights_only=True)["state"])
    monkeypatch.delattr(cls, "epoch_end")

    resumed = _run(spec)
    assert resumed["train"]["resumed_from"] == 1 and reference["train"]["resumed_from"] == 0
    assert resumed["train"]["steps"] == reference["train"]["steps"]
    assert resumed["train"]["final_loss"] == pytest.approx(reference["train"]["final_loss"], abs=1e-6)
    assert not (out / "train_state.pt").exists()

    strip = lambda m: {k: v for k, v in m.items() if k not in TIMINGS}  # noqa: E731
    assert strip(resumed) == strip(reference)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["top1"] == reference["top1"]

    a = pd.read_parquet(out / "predictions.parquet")
    b = pd.read_parquet(tmp_path / "uninterrupted" / "predictions.parquet")
    assert a["pred"].tolist() == b["pred"].tolist() and a["path"].tolist() == b["path"].tolist()
    assert [list(x) for x in a["top5"]] == [list(x) for x in b["top5"]]

    got = torch.load(out / "checkpoint.pt", weights_only=True)["state"]
    want = torch.load(tmp_path / "uninterrupted" / "checkpoint.pt", weights_only=True)["state"]
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=0)


def test_a_checkpoint_of_another_run_is_refused(data_root, tmp_path, monkeypatch):
    cls = get_method("coop")

    def die(self, task, epoch):
        if epoch == 1:
            raise Killed

    monkeypatch.setattr(cls, "epoch_end", die, raising=False)
    with pytest.raises(Killed):
        _run(_spec(data_root, tmp_path, "coop", "run"))
    monkeypatch.delattr(cls, "epoch_end")
    other = _spec(data_root, tmp_path, "coop", "run")
    other.seed = 2  # another cell pointed at the same --out (other hyper-parameters of this cell: discarded)
    from fewclip.errors import FewclipError

    with pytest.raises(FewclipError, match="belongs to another run"):
        _run(other)
