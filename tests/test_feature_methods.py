"""Linear probe, CLIP-Adapter, Tip-Adapter and Tip-Adapter-F on the feature store (SPEC §2)."""

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from fewclip.data.datasets import get_spec
from fewclip.data.fixtures import write_fixture
from fewclip.engine.features import Features, FeatureStore
from fewclip.engine.inputs import FeatureTask
from fewclip.engine.run import RunSpec, run_cell
from fewclip.methods import ClassSet, NotApplicable, get_method, resolve_hparams
from fewclip.methods._tip import search_alpha_beta, search_grid
from fewclip.models.backbone import Backbone

METHODS = ("linear_probe", "clip_adapter", "tip_adapter", "tip_adapter_f")


def _norm(x):
    return x / x.norm(dim=-1, keepdim=True)


def _task(method, n_classes=3, shots=2, dim=16, n_views=10, seed=0, dataset="oxford_pets", preset="clean",
          overrides=None, val_labels=None):
    """A synthetic FeatureTask: class c's features cluster around a random direction. Each
    Features holds the normalised rows and raw ones (the same directions with norms 1-5, drawn
    from their own generator so the normalised rows do not depend on them)."""
    g = torch.Generator().manual_seed(seed)
    g_norm = torch.Generator().manual_seed(seed + 1000)
    centres = _norm(torch.randn(n_classes, dim, generator=g))
    text = _norm(centres + 0.5 * torch.randn(n_classes, dim, generator=g))

    def sample(paths, labels, n=None):
        x = centres[labels] + 0.6 * torch.randn(*(() if n is None else (n,)), len(labels), dim, generator=g)
        raw = _norm(x) * (1 + 4 * torch.rand(*x.shape[:-1], 1, generator=g_norm))
        return Features(paths, labels, _norm(raw), raw)

    train_y = torch.arange(n_classes).repeat_interleave(shots)
    val_y = torch.arange(n_classes).repeat_interleave(2)
    train = sample([f"t{i}" for i in range(len(train_y))], train_y)
    views = sample(train.paths, train_y, n_views)
    val = sample([f"v{i}" for i in range(len(val_y))], val_y)
    if val_labels is not None:
        val.labels = val_labels
    classes = ClassSet([f"c{i}" for i in range(n_classes)], text, torch.arange(n_classes))
    cls = get_method(method)
    hp = resolve_hparams(cls, dataset, shots, preset, overrides or {})
    return cls, FeatureTask(classes, train, views, val, dataset, shots, 1, preset, hp, torch.device("cpu"),
                            get_spec(dataset))


def _fit(method, **kw):
    cls, task = _task(method, **kw)
    torch.manual_seed(0)
    m = cls(task.hp)
    info = m.setup(task)
    return m, task, info


def _zeroshot(x, classes):
    cls = get_method("zeroshot")
    return cls(resolve_hparams(cls, "oxford_pets", 1, "clean")).logits(x, classes)


# ---------------------------------------------------------------------------- Tip-Adapter


def test_tip_logits_equal_numpy_formula():
    m, task, info = _fit("tip_adapter", overrides={"search": False, "init_alpha": 1.7, "init_beta": 2.3})
    assert (info["alpha"], info["beta"]) == (1.7, 2.3)
    x = _norm(torch.randn(7, 16, generator=torch.Generator().manual_seed(3)))
    got = m.logits(x, task.classes).numpy()

    f, w = x.double().numpy(), task.classes.text_features.double().numpy()
    keys = task.views.raw.double().numpy().mean(0)  # the mean of the raw views, then normalised
    keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
    values = np.eye(3)[task.train.labels.numpy()]
    want = 100 * f @ w.T + 1.7 * np.exp(-2.3 * (1 - f @ keys.T)) @ values
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_tip_alpha_zero_is_zero_shot():
    m, task, _ = _fit("tip_adapter", overrides={"search": False, "init_alpha": 0.0})
    x = _norm(torch.randn(5, 16))
    assert torch.equal(m.logits(x, task.classes), _zeroshot(x, task.classes))


def test_tip_f_before_training_equals_tip():
    tip, task, _ = _fit("tip_adapter", overrides={"search": False})
    tipf, _, _ = _fit("tip_adapter_f", overrides={"search": False})
    x = _norm(torch.randn(5, 16))
    assert torch.equal(tip.logits(x, task.classes), tipf.logits(x, task.classes))
    assert tipf.keys.requires_grad and not tipf.values.requires_grad


def test_search_grid_is_spec_formula():
    betas, alphas = search_grid(7, 3)
    assert len(betas) == 200 and len(alphas) == 20
    assert betas == [0.1 + i * (7 - 0.1) / 200 for i in range(200)]
    assert alphas == [0.1 + j * (3 - 0.1) / 20 for j in range(20)]
    assert betas[0] == alphas[0] == 0.1 and betas[-1] < 7 and alphas[-1] < 3


def test_search_matches_brute_force():
    g = torch.Generator().manual_seed(5)
    x, text, keys = _norm(torch.randn(30, 8, generator=g)), _norm(torch.randn(4, 8, generator=g)), \
        _norm(torch.randn(12, 8, generator=g))
    values = torch.eye(4)[torch.arange(12) % 4]
    y = torch.randint(4, (30,), generator=g)
    # small budget: exercises the row chunking
    steps = (50, 20)  # a coarser β grid keeps the Python brute force fast; same code path
    best = search_alpha_beta(x, y, text, keys, values, 12, 10, steps=steps, budget=500)
    betas, alphas = search_grid(12, 10, steps)
    best_acc, want = -1, None
    for beta in betas:  # the official loop, strict '>' (ties: the first)
        for alpha in alphas:
            logits = 100 * x @ text.t() + alpha * torch.exp(-beta * (1 - x @ keys.t())) @ values
            acc = (logits.argmax(-1) == y).float().mean().item()
            if acc > best_acc:
                best_acc, want = acc, (alpha, beta)
    assert (best["alpha"], best["beta"]) == want
    assert best["acc"] == pytest.approx(100 * best_acc)


def test_tip_search_uses_val_and_slices_classes():
    m, task, info = _fit("tip_adapter")
    assert info["search_split"] == "fewshot_val" and info["search_n"] == len(task.val.labels)
    assert info["beta"] in search_grid(7, 3)[0] and info["alpha"] in search_grid(7, 3)[1]
    x = _norm(torch.randn(4, 16))
    sub = task.classes.subset([2, 0])  # e.g. ImageNet-A/-R: a subset of the training classes
    assert torch.allclose(m.logits(x, sub), m.logits(x, task.classes)[:, [2, 0]], atol=1e-5)
    unseen = ClassSet(["new"], task.classes.text_features[:1], None)
    with pytest.raises(NotApplicable):
        m.logits(x, unseen)


def test_tip_official_presets():
    hp = resolve_hparams(get_method("tip_adapter"), "oxford_pets", 4, "official")
    assert hp["search_split"] == "full_val" and hp["init_alpha"] == 1.17 and (hp["beta_max"], hp["alpha_max"]) == (7, 3)
    hp = resolve_hparams(get_method("tip_adapter"), "imagenet", 4, "official")
    assert hp["search_split"] == "test" and hp["select_on_test"] is True
    hp = resolve_hparams(get_method("tip_adapter_f"), "eurosat", 4, "official")
    assert hp["epochs"] == 100 and hp["select_on_test"] is True and hp["init_alpha"] == 2.0
    hp = resolve_hparams(get_method("tip_adapter_f"), "caltech101", 4, "clean")
    assert (hp["epochs"], hp["lr"], hp["eps"], hp["batch_size"], hp["schedule"], hp["optimizer"]) == \
        (20, 0.001, 1e-4, 256, "cosine_iter", "adamw")
    assert hp["search_split"] == "fewshot_val" and hp["select_on_test"] is False


# ---------------------------------------------------------------------------- CLIP-Adapter


@pytest.mark.parametrize("side", ["visual", "text", "both"])
def test_clip_adapter_ratio_zero_is_zero_shot(side):
    m, task, _ = _fit("clip_adapter", overrides={"ratio": 0.0, "select_ratio": False, "side": side})
    x = _norm(torch.randn(6, 16)).half().float()  # stored features are fp16, not exactly unit norm
    assert torch.equal(m.logits(x, task.classes), _zeroshot(x, task.classes))


def test_clip_adapter_epochs_and_presets():
    cls = get_method("clip_adapter")
    assert [resolve_hparams(cls, "dtd", k, "clean")["epochs"] for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert resolve_hparams(cls, "imagenet", 16, "clean")["epochs"] == 50
    off = resolve_hparams(cls, "dtd", 4, "official")
    assert (off["ratio"], off["select_ratio"], off["lr"], off["batch_size"], off["optimizer"]) == \
        (0.2, False, 0.01, 32, "sgd")
    assert resolve_hparams(cls, "dtd", 4, "clean")["select_ratio"] is True


def test_clip_adapter_text_side_scores_unseen_classes():
    m, task, _ = _fit("clip_adapter", overrides={"side": "text", "select_ratio": False})
    unseen = ClassSet(["a", "b"], _norm(torch.randn(2, 16)), None)
    assert m.logits(_norm(torch.randn(3, 16)), unseen).shape == (3, 2)


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_fixture("oxford_pets", root, n_classes=4, n_train=4, n_val=3, n_test=3)
    return root


def _spec(pets, out, method, shots=2, seed=1, preset="clean", features=None, **overrides):
    return RunSpec(data_root=str(pets), dataset="oxford_pets", method=method, backbone="fewclip-tiny-vit",
                   pretrained="none", out=str(out), shots=shots, seed=seed, preset=preset,
                   features=str(features or out.parent / "features"), overrides=overrides)


def test_clip_adapter_loss_falls_on_fixture(pets, tmp_path, monkeypatch):
    cls = get_method("clip_adapter")
    losses, original = [], cls.loss

    def record(self, batch, epoch):
        loss = original(self, batch, epoch)
        losses.append((epoch, loss.item()))
        return loss

    monkeypatch.setattr(cls, "loss", record)
    # lr 0.05: the random tiny CLIP's temperature is 1/0.07 (14.3), not a trained CLIP's 100, so its
    # logits, and the gradients of the default lr 0.01, are 7x smaller
    m = run_cell(_spec(pets, tmp_path / "run", "clip_adapter", shots=2, epochs=30, lr=0.05))
    per_epoch = {}
    for epoch, loss in losses:
        per_epoch.setdefault(epoch, []).append(loss)
    first = np.mean([np.mean(per_epoch[e]) for e in range(5)])
    last = np.mean([np.mean(per_epoch[e]) for e in range(25, 30)])
    assert last < 0.8 * first
    hp = {**m["hparams"], **m["selected"]}  # settings, then what setup/search chose
    assert hp["ratio"] in (0.2, 0.4, 0.6, 0.8) and hp["ratio_selected_on"] == "fewshot_val"
    accs = hp["ratio_val_acc"]
    assert str(hp["ratio"]) == next(r for r, a in accs.items() if a == max(accs.values()))  # first best
    # only the chosen adapter is kept: W1 d→d/4 and W2 d/4→d
    dim = torch.load(tmp_path / "features" / "fewclip-tiny-vit" / "oxford_pets" / "test.pt")["features"].shape[1]
    assert m["trainable_params"] == 2 * dim * (dim // 4)


# ---------------------------------------------------------------------------- linear probe


def _probe_task(val_label: int):
    """Two classes, 6 vs 2 shots; the val images sit on class 1's cluster and are labelled
    `val_label`. Label 1: the data says a weakly regularised fit (large C) is right; label 0:
    only a strongly regularised fit, which predicts the majority class everywhere, is right."""
    _, task = _task("linear_probe", n_classes=2, shots=2)
    g = torch.Generator().manual_seed(1)
    centres = _norm(torch.randn(2, 16, generator=g))
    train_y = torch.tensor([0] * 6 + [1] * 2)
    task.train = Features([f"t{i}" for i in range(8)], train_y,
                          _norm(centres[train_y] + 0.05 * torch.randn(8, 16, generator=g)))
    task.val = Features([f"v{i}" for i in range(4)], torch.full((4,), val_label),
                        _norm(centres[[1, 1, 1, 1]] + 0.05 * torch.randn(4, 16, generator=g)))
    return task


def test_linear_probe_c_comes_from_val():
    cls = get_method("linear_probe")
    chosen = {}
    for label in (1, 0):
        task = _probe_task(label)
        m = cls(task.hp)
        info = m.setup(task)
        chosen[label] = info
        assert info["val_acc"] == 100.0
    assert chosen[1]["C"] >= 1e5 and chosen[0]["C"] <= 1e-3  # the val split alone moved the choice
    assert chosen[1]["c_grid_acc"]["1e+06"] == 100.0 and chosen[1]["c_grid_acc"]["1e-06"] == 0.0
    assert set(chosen[1]["c_grid_acc"]) == {"1e+06", "10000", "100", "1", "0.01", "0.0001", "1e-06"}
    assert len(chosen[1]["c_search"]) == 8


def test_linear_probe_search_is_lpclip_bisection(monkeypatch):
    """Coarse peak, then 8 log-space halvings of [peak/10, peak·10], keeping the better end."""
    from fewclip.methods import linear_probe

    monkeypatch.setattr(linear_probe, "accuracy", lambda clf, x, y: -abs(np.log10(clf.C) - np.log10(3e-3)))
    _, task = _task("linear_probe")
    x, y = task.train.features.double().numpy(), task.train.labels.numpy()
    found = linear_probe.search_c(x, y, x, y, 0)
    assert found["c_search"][0]["C_left"] == pytest.approx(1e-3) and found["c_search"][0]["C_right"] == pytest.approx(1e-1)
    assert found["C"] == pytest.approx(3e-3, rel=0.02)
    assert found["clf"].C == found["C"]


def test_linear_probe_same_seed_same_classifier():
    a, task, info_a = _fit("linear_probe", seed=4)
    b, _, info_b = _fit("linear_probe", seed=4)
    assert info_a == info_b
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    x = _norm(torch.randn(5, 16))
    sub = task.classes.subset([1, 2])
    assert torch.equal(a.logits(x, sub), a.logits(x, task.classes)[:, [1, 2]])
    with pytest.raises(NotApplicable):
        a.logits(x, ClassSet(["new"], task.classes.text_features[:1], None))


def test_linear_probe_logits_match_sklearn():
    from fewclip.methods.linear_probe import fit, torch_head

    _, task = _task("linear_probe")
    for n in (3, 2):  # multinomial and binary
        keep = task.train.labels < n
        x, y = task.train.features[keep].double().numpy(), task.train.labels[keep].numpy()
        clf = fit(x, y, 1.0, 0)
        w, b = torch_head(clf, n, x.shape[1])
        ours = (torch.as_tensor(x).float() @ w.t() + b).argmax(-1).numpy()
        assert (ours == clf.predict(x)).all()


# ---------------------------------------------------------------------------- the grid, encoded once


def test_grid_runs_and_encodes_each_image_once(pets, tmp_path, monkeypatch):
    encoded, images = Counter(), [0]
    original_encode, original_images = FeatureStore._encode, Backbone.encode_images

    def record(self, items, transform, desc, view=None):
        for it in items:
            encoded[(self.dataset.name, it.path, view)] += 1
        return original_encode(self, items, transform, desc, view)

    def count(self, x, **kw):
        images[0] += x.shape[0]
        return original_images(self, x, **kw)

    monkeypatch.setattr(FeatureStore, "_encode", record)
    monkeypatch.setattr(Backbone, "encode_images", count)
    features = tmp_path / "features"
    short = {"clip_adapter": {"epochs": 2}, "tip_adapter_f": {"epochs": 2}}
    results = {}
    for preset, seeds in (("clean", (1, 2)), ("official", (1,))):
        for method in METHODS:
            for shots in (1, 2):
                for seed in seeds:
                    out = tmp_path / preset / method / f"{shots}shot_seed{seed}"
                    results[(preset, method, shots, seed)] = run_cell(
                        _spec(pets, out, method, shots, seed, preset, features, **short.get(method, {})))
                    assert json.loads((out / "metrics.json").read_text())["top1"] is not None

    dup = {k: n for k, n in encoded.items() if n > 1}
    assert not dup, f"images encoded more than once: {dup}"
    assert images[0] == sum(encoded.values())  # every encoder call went through the store
    assert sum(1 for k in encoded if k[2] is None) > 0 and sum(1 for k in encoded if k[2] == 9) > 0

    for (preset, method, shots, seed), m in results.items():
        hp = {**m["hparams"], **m["selected"]}  # settings, then what setup/search chose
        assert m["preset"] == preset
        if method == "linear_probe":
            assert "C" in hp and "val_acc" in hp
        elif method == "clip_adapter":
            assert hp["ratio"] == 0.2 if preset == "official" else hp["ratio_selected_on"] == "fewshot_val"
        else:
            assert {"alpha", "beta", "search_split"} <= set(hp)
            assert hp["search_split"] == ("full_val" if preset == "official" else "fewshot_val")
            if preset == "official":
                assert hp["search_n"] == 4 * 3  # the full val split: 4 classes x 3 images
        if method == "tip_adapter_f":
            assert hp["selected_on"] == ("test" if preset == "official" else "last")
            assert 0 <= hp["epoch_kept"] <= 2


@pytest.mark.parametrize("preset", ["clean", "official"])
def test_a_half_feature_method_is_fed_half_features(pets, tmp_path, preset):
    """`precision=fp16` on a feature method that is fp32 in both presets (CLIP-Adapter): it trains
    in pure half on the CPU, picks its ratio on half val features (clean) and is evaluated on half
    image and text features (the feature path's rule for a half method)."""
    m = run_cell(_spec(pets, tmp_path / "ca", "clip_adapter", preset=preset, epochs=2, precision="fp16"))
    assert m["train"]["precision"]["weights"] == "fp16" and m["top1"] is not None
    assert m["selected"]["ratio_selected_on"] == ("fixed" if preset == "official" else "fewshot_val")
    state = torch.load(tmp_path / "ca" / "checkpoint.pt", weights_only=True)["state"]
    assert {v.dtype for v in state.values()} == {torch.float16}


def test_base2new_cache_and_probe_are_na_on_new(pets, tmp_path):
    for method, na in (("tip_adapter", True), ("linear_probe", True), ("clip_adapter", False)):
        out = tmp_path / method
        spec = _spec(pets, out, method, shots=2, **({"epochs": 2} if method == "clip_adapter" else {}))
        spec.protocol = "base2new"
        base = run_cell(spec)
        new = json.loads((out / "eval_new" / "metrics.json").read_text())
        assert base["top1"] is not None
        assert (new["top1"] is None) == na and ("na_reason" in new) == na


def test_official_cells_record_what_they_fit_and_report(pets, tmp_path):
    """Under `official`, Tip-Adapter-F reports max(best epoch, after search) with both
    values, the linear probe fits (and scores) raw features, and the precision is recorded:
    the official pure fp16 on this CPU too, the clean preset's "auto" as fp32."""
    feats = tmp_path / "features"
    m = run_cell(_spec(pets, tmp_path / "tipf", "tip_adapter_f", preset="official", features=feats, epochs=3))
    assert m["top1"] == max(m["top1_best_epoch"], m["top1_after_search"]) and m["top1_rule"].startswith("max(")
    assert m["selected"]["selected_on"] == "test" and m["hparams"]["templates"] == "dataset"
    prec = m["train"]["precision"]
    assert prec["asked"] == "fp16" and prec["weights"] == "fp16" and prec["grad_scaler"] is False, prec
    assert prec["used"].startswith("fp16 (pure") and "note" not in prec
    state = torch.load(tmp_path / "tipf" / "checkpoint.pt", weights_only=True)["state"]
    assert state["keys"].dtype == torch.float16 and state["alpha"].dtype == torch.float64
    c = run_cell(_spec(pets, tmp_path / "tipf_clean", "tip_adapter_f", features=feats, epochs=3))
    assert c["top1"] == c["top1_after_search"] and c["top1_rule"] == "accuracy after the second search"
    assert c["train"]["precision"] == {"asked": "auto", "used": "fp32", "weights": "fp32", "grad_scaler": False,
                                       "note": "CPU run: fp32"}
    for preset, kind in (("official", "raw"), ("clean", "normalised")):
        lp = run_cell(_spec(pets, tmp_path / f"lp_{preset}", "linear_probe", preset=preset, features=feats))
        assert lp["selected"]["fit_on"] == kind
        pred = pd.read_parquet(tmp_path / f"lp_{preset}" / "predictions.parquet")
        assert lp["top1"] == pytest.approx(100.0 * pred["correct"].mean())
