"""The feature store records what it was computed from and never reuses stale features:
another data root, split file, weights, preprocessing, precision or open_clip version each
make a stored file recompute, and store.json names the source of what it holds."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import fewclip

TINY = "fewclip-tiny-vit"


@pytest.fixture
def data(tmp_path):
    from fewclip.data.fixtures import write_fixture

    root = tmp_path / "data"
    write_fixture("dtd", root, n_classes=3, n_train=2, n_val=1, n_test=2)
    return root


def _store(root, data_root, pretrained="none", counter=None):
    from fewclip.data.datasets import load_dataset
    from fewclip.engine.features import FeatureStore
    from fewclip.models.backbone import load_backbone

    ds = load_dataset("dtd", data_root)

    def backbone():
        if counter is not None:
            counter.append(pretrained)
        return load_backbone(TINY, pretrained, "cpu")

    return FeatureStore(root, ds, backbone, model=TINY, pretrained=pretrained), ds


def _fill(store, ds):
    store.text("dataset")
    store.test()
    store.fewshot(ds.train)
    store.views(ds.train[:2], 2)
    return store.images_encoded


def test_same_inputs_reuse_the_store_without_loading_the_model(tmp_path, data, one_torch_thread):
    store, ds = _store(tmp_path / "s", data)
    assert _fill(store, ds) > 0
    loads = []
    again, ds = _store(tmp_path / "s", data, counter=loads)
    assert _fill(again, ds) == 0 and loads == [] and again.recomputed == []


def _changed_data_root(tmp_path, data):
    other = tmp_path / "moved"
    shutil.copytree(data, other)
    return other


def _changed_split(tmp_path, data):
    split = next((data / "dtd").glob("split_*.json"))
    obj = json.loads(split.read_text())
    obj["test"] = obj["test"][:-1]  # another published split: one test image fewer
    split.write_text(json.dumps(obj))
    return data


CHANGES = {
    "data root": _changed_data_root,
    "split file": _changed_split,
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_changed_data_recomputes(tmp_path, data, change, one_torch_thread, capfd):
    store, ds = _store(tmp_path / "s", data)
    _fill(store, ds)
    new_root = CHANGES[change](tmp_path, data)
    again, ds2 = _store(tmp_path / "s", new_root)
    assert _fill(again, ds2) > 0
    assert set(again.recomputed) == {"text.pt", "test.pt", "fewshot.pt", "views.pt"}
    err = capfd.readouterr().err
    assert ("data_root" if change == "data root" else "split") in err and "recomputing" in err
    test = torch.load(tmp_path / "s" / "test.pt", weights_only=True)
    assert test["paths"] == [it.path for it in ds2.test] and test["source"] == again.source


def test_other_weights_recompute_and_store_json_names_them(tmp_path, data, one_torch_thread):
    from fewclip.models.backbone import load_backbone

    ckpt = tmp_path / "tiny.pt"
    model = load_backbone(TINY, "none", "cpu").model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "store"
    common = ["encode", "--data-root", data, "--dataset", "dtd", "--backbone", TINY, "--device", "cpu",
              "--views", "0", "--templates", "dataset", "--out", out]
    assert fewclip(*common, "--pretrained", "none").returncode == 0
    first = torch.load(out / "test.pt", weights_only=True)["features"]
    proc = fewclip(*common, "--pretrained", ckpt)
    assert proc.returncode == 0, proc.stderr
    assert "weights" in proc.stderr and "recomputing" in proc.stderr
    second = torch.load(out / "test.pt", weights_only=True)["features"]
    assert not torch.equal(first, second)
    meta = json.loads((out / "store.json").read_text())
    from fewclip.io import sha256_file

    assert meta["source"]["weights"] == "sha256:" + sha256_file(ckpt) and meta["sha256"] == sha256_file(ckpt)
    assert meta["source"]["data_root"] == str(data.resolve()) and "test.pt" in meta["recomputed"]
    # the same weights again: nothing is encoded
    proc = fewclip(*common, "--pretrained", ckpt)
    assert "0 image encodings" in proc.stdout and json.loads((out / "store.json").read_text())["recomputed"] == []


@pytest.mark.parametrize("key,value", [
    ("PREPROCESS", {"test": "resize 256 + center crop 224"}),
    ("PRECISION", {"encoder": "fp16", "stored": "fp16"}),
])
def test_other_preprocessing_or_precision_recomputes(tmp_path, data, monkeypatch, key, value, one_torch_thread):
    import fewclip.engine.features as features

    store, ds = _store(tmp_path / "s", data)
    store.test()
    monkeypatch.setattr(features, key, value)
    again, ds = _store(tmp_path / "s", data)
    again.test()
    assert again.recomputed == ["test.pt"] and again.images_encoded == len(ds.test)


def test_other_open_clip_version_recomputes(tmp_path, data, monkeypatch, one_torch_thread):
    import importlib.metadata

    store, ds = _store(tmp_path / "s", data)
    store.text("dataset")
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda pkg: "0.0.1" if pkg == "open_clip_torch" else real(pkg))
    again, ds = _store(tmp_path / "s", data)
    again.text("dataset")
    assert again.recomputed == ["text.pt"] and again.source["open_clip"] == "0.0.1"


def test_a_store_of_the_old_format_is_recomputed(tmp_path, data, one_torch_thread):
    store, ds = _store(tmp_path / "s", data)
    store.test()
    old = torch.load(tmp_path / "s" / "test.pt", weights_only=True)
    del old["source"]  # written by an earlier fewclip: normalised features, no source
    torch.save(old, tmp_path / "s" / "test.pt")
    again, ds = _store(tmp_path / "s", data)
    again.test()
    assert again.recomputed == ["test.pt"]


def test_raw_features_are_stored_and_normalised_on_read(tmp_path, data, one_torch_thread):
    store, ds = _store(tmp_path / "s", data)
    feats = store.test()
    assert feats.raw is not None and not torch.allclose(feats.raw.norm(dim=-1), torch.ones(len(ds.test)))
    assert torch.allclose(feats.features, feats.raw / feats.raw.norm(dim=-1, keepdim=True))
    views = store.views(ds.train[:2], 2)
    assert views.raw.shape == views.features.shape == (2, 2, feats.raw.shape[1])
