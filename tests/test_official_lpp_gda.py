"""LP++ and GDA against their official code's outputs (tests/data/official/README.md: lpp.pt, gda.pt).

The reference files hold what the official LP++ (`LinearProbe_P2.forward`) and GDA (`main_few_shots.py`,
`main_base2new.py` `run`) computed on synthetic CLIP features: LP++'s initialisation, step sizes, its
first 12 steps and all 300 epochs, the kept epoch and its test logits (fp32, and the official fp16 path);
GDA's class means, shrinkage covariance, precision, classifier, α search and test logits, and the
base-to-new estimator (pooled precision, the synthesised new classes). Tolerance 1e-5 in fp32, relative
to the max where values are large (logits, precisions, weights).

Official names → fewclip names:

| official                               | fewclip                                           |
|----------------------------------------|---------------------------------------------------|
| LP++ `classifier.weight`, `.bias`       | `lpp.weight` [C, d], `lpp.bias` [C]               |
| LP++ `alpha_vec` [1, C]                 | `lpp.alpha` [C]                                   |
| LP++ `text_weights`, GDA `clip_weights` [d, C] | `ClassSet.text_features` [C, d] (the transpose) |
| GDA `W` [d, C], `b` [C], `best_alpha`   | `gda.W`, `gda.b`, `gda.alpha`                     |
| GDA `vecs` [E·N, d] (pass after pass)   | the stored views [V, N, d] reshaped               |
"""

from __future__ import annotations

import pytest
import torch

from fewclip.data.datasets import get_spec
from fewclip.engine.features import Features
from fewclip.engine.inputs import FeatureTask
from fewclip.errors import ConfigError
from fewclip.methods import ClassSet, get_method, resolve_hparams
from fewclip.methods import gda as G
from fewclip.methods import lpp as L
from official_ref import close, ref

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = 1e-5
CPU = torch.device("cpu")


def _norm(x):
    return x / x.norm(dim=-1, keepdim=True)


def _feats(raw, labels, prefix):
    return Features([f"{prefix}{i}" for i in range(raw.shape[-2])], labels, _norm(raw), raw)


def _classes(text_dc):
    """A ClassSet from the official [d, C] text weights."""
    n = text_dc.shape[1]
    return ClassSet([f"c{i}" for i in range(n)], text_dc.t().contiguous(), torch.arange(n))


# ---------------------------------------------------------------------------------------------- LP++


@pytest.fixture(scope="module")
def lpp_run():
    """fewclip's LP++ loop on the reference's inputs and bias init, every epoch recorded."""
    r = ref("lpp")
    x, y, text = r["train_features"], r["train_labels"], r["text_weights"].t()
    W, init_alpha = L.init_classifier(x, y, text, text.shape[0])
    lr_w, lr_alpha, lam = L.step_sizes(x, text)
    xv = r["val_features"]
    epochs = []

    def record(epoch, s, loss, acc, val_acc):
        epochs.append({"W": s.W.clone(), "b": s.b.clone(), "alpha": s.alpha.clone(), "grad": s.alpha_grad.clone(),
                       "loss": loss, "acc": acc, "val_acc": val_acc})

    out = L.fit(x, y, x @ text.t(), (xv, r["val_labels"], xv @ text.t()), W, r["init"]["b"],
                r["init"]["alpha"][0], lr_w, lr_alpha, r["config"]["train_epoch"], 10, on_epoch=record)
    return r, {"W": W, "init_alpha": init_alpha, "lr_w": lr_w, "lr_alpha": lr_alpha, "lam": lam}, epochs, out


def test_lpp_initialisation_is_the_image_sum_and_one_text_scalar(lpp_run):
    r, init, _, _ = lpp_run
    close(_norm(r["train_features_raw"]), r["train_features"], 1e-7)
    close(init["W"], r["init"]["W"], 1e-6)  # per-class SUM of the features (not the mean)
    assert init["init_alpha"] == pytest.approx(r["init"]["alpha_scalar"], rel=TOL)
    close(torch.full((5,), init["init_alpha"]), r["init"]["alpha"][0], TOL)  # one value for every class
    means = r["init"]["alpha_tilde"] / r["config"]["shots"]  # shots · class mean of f·t_c, float64
    assert init["init_alpha"] == pytest.approx(float((L.ALPHA_INIT_SCALE * means).mean()), rel=TOL)


def test_lpp_step_size_rules(lpp_run):
    r, init, _, _ = lpp_run
    assert init["lam"] == pytest.approx(r["lr"]["max_eigen"], rel=TOL)
    assert init["lr_w"] == pytest.approx(r["lr"]["lr_w"], rel=TOL)  # 4N / λ_max(FᵀF)
    assert init["lr_alpha"] == pytest.approx(r["lr"]["lr_alpha"], rel=TOL)  # N / (4 max_c Σ_i (f_i·t_c)²)
    assert init["lr_w"] == pytest.approx(4 * r["lr"]["N"] / r["lr"]["max_eigen"], rel=TOL)


def test_lpp_first_steps_with_the_never_zeroed_alpha_gradient(lpp_run):
    r, _, epochs, _ = lpp_run
    for step in r["steps"]:
        got = epochs[step["epoch"]]
        close(got["W"], step["W"], TOL, relative_to_max=True)
        close(got["b"], step["b"], TOL, relative_to_max=True)
        close(got["alpha"], step["alpha"][0], TOL, relative_to_max=True)
        close(got["grad"], step["alpha_grad_accum"][0], TOL, relative_to_max=True)  # the sum since epoch 0
        assert got["loss"] == pytest.approx(step["loss"], abs=TOL)
    # α moves only at epochs 10, 20, ... (1-based), with the accumulated gradient
    assert torch.equal(epochs[8]["alpha"], epochs[0]["alpha"])
    assert not torch.equal(epochs[9]["alpha"], epochs[8]["alpha"])


def test_lpp_300_epochs_and_the_reporting_epoch(lpp_run):
    r, _, epochs, out = lpp_run
    assert len(epochs) == 300
    close(torch.tensor([e["loss"] for e in epochs]), r["loss_per_epoch"], TOL)
    close(torch.stack([e["alpha"] for e in epochs]), r["alpha_per_epoch"], TOL, relative_to_max=True)
    close(torch.stack([e["grad"] for e in epochs]), r["alpha_grad_accum_per_epoch"], TOL, relative_to_max=True)
    assert [e["acc"] for e in epochs] == pytest.approx(r["train_acc_per_epoch"], abs=1e-9)
    assert out["val_accs"] == pytest.approx(r["val_acc_per_epoch"], abs=1e-9)
    best, evaluated = 0.0, []  # the epochs at which the official code recomputes the test logits (val ≥ best)
    for epoch, acc in enumerate(out["val_accs"]):
        if acc >= best:
            best = acc
            evaluated.append(epoch)
    assert evaluated == r["test_eval_epochs"]
    assert out["epoch_kept"] == r["final"]["best_epoch"] == evaluated[-1]  # the LATEST tying epoch
    assert out["val_acc"] == pytest.approx(r["final"]["best_val_acc"])
    close(epochs[-1]["W"], r["final"]["W"], TOL, relative_to_max=True)
    close(epochs[-1]["b"], r["final"]["b"], TOL, relative_to_max=True)
    close(epochs[-1]["alpha"], r["final"]["alpha"][0], TOL, relative_to_max=True)
    assert out["last_loss"] == pytest.approx(r["final"]["returned_loss"], abs=1e-7)  # the last epoch's loss
    xt, text = r["test_features"], r["text_weights"].t()
    logits = L.blend(xt, xt @ text.t(), out["W"], out["b"], out["alpha"])
    close(logits, r["final"]["logits_test"], TOL, relative_to_max=True)
    assert 100.0 * (logits.argmax(1) == r["test_labels"]).double().mean().item() == r["final"]["acc_test"]


def _lpp_task(r, preset, **overrides):
    hp = resolve_hparams(get_method("lpp"), "dtd", r["config"]["shots"], preset, overrides)
    raw = r["train_features_raw"]
    train = _feats(raw, r["train_labels"], "t")
    views = Features(train.paths, train.labels, _norm(raw)[None], raw[None])  # LP++'s one augmented view
    val = _feats(r["val_features_raw"], r["val_labels"], "v")
    return FeatureTask(_classes(r["text_weights"]), train, views, val, "dtd", r["config"]["shots"], 1, preset, hp,
                       CPU, get_spec("dtd"))


@pytest.mark.parametrize("preset", ["clean", "official"])
def test_lpp_method_reproduces_the_official_run(monkeypatch, preset):
    """Through the method: `clean` (fp32) equals the fp32 reference; `official` (fp16 storage) equals the
    official code's fp16 run: the same step sizes, val accuracies, kept epoch, final α, and W, b within a
    few half ulps (the reference's CPU fp16 kernels round a few products differently)."""
    r = ref("lpp")
    monkeypatch.setattr(L, "init_bias", lambda n, d, seed: r["init"]["b"].clone())  # the official RNG draw
    task = _lpp_task(r, preset)
    m = get_method("lpp")(task.hp)
    info = m.setup(task)
    test = _norm(r["test_features_raw"])
    logits = m.logits(test.half() if m.is_half else test, task.classes)
    acc = 100.0 * (logits.argmax(1) == r["test_labels"]).double().mean().item()
    if preset == "clean":
        assert not m.is_half and task.hp["precision"] == "fp32"
        assert info["epoch_kept"] == r["final"]["best_epoch"] + 1
        assert info["lr_w"] == pytest.approx(r["lr"]["lr_w"], rel=TOL)
        close(logits, r["final"]["logits_test"], TOL, relative_to_max=True)
        assert acc == r["final"]["acc_test"]
        return
    f = r["fp16"]
    assert m.is_half and m.weight.dtype == torch.float16 and task.hp["precision"] == "fp16"
    assert info["init_alpha"] == f["alpha_scalar"] and info["lr_alpha"] == f["lr_alpha"]
    assert info["lr_w"] == pytest.approx(f["lr_w"], rel=1e-4)  # fp16 Gram: the CPU half kernel sums differently
    assert info["epoch_kept"] == f["best_epoch"] + 1 and acc == f["acc_test"]
    close(logits, f["logits_test"].float(), 0.05)  # |logits| ≤ 29: a few half ulps
    # the whole trajectory in half storage: same val accuracies every epoch, α exactly at the end
    q = L.Rounding("fp16")
    x, text, xv = q(r["train_features"]), q(r["text_weights"].t()), q(r["val_features"])
    W, a = L.init_classifier(x, r["train_labels"], text, 5, q)
    last = {}
    out = L.fit(x, r["train_labels"], q(x @ text.t()), (xv, r["val_labels"], q(xv @ text.t())), W,
                q(f["init_b"].float()), q(torch.full((5,), a)), info["lr_w"], info["lr_alpha"], 300, 10, q=q,
                on_epoch=lambda e, s, *_: last.update(W=s.W, b=s.b, alpha=s.alpha))
    assert out["val_accs"] == pytest.approx(f["val_acc_per_epoch"], abs=1e-9)
    close(last["alpha"], f["final_alpha"][0].float(), 0.0)
    close(last["W"], f["final_W"].float(), 0.05)
    close(last["b"], f["final_b"].float(), 0.05)


def test_lpp_presets_and_switches():
    cls = get_method("lpp")
    off, clean = resolve_hparams(cls, "imagenet", 16, "official"), resolve_hparams(cls, "imagenet", 16, "clean")
    assert (off["precision"], off["templates"]) == ("fp16", "ensemble7")
    assert (clean["precision"], clean["templates"]) == ("fp32", "dataset")
    for hp in (off, clean):  # the method's own rules, in both presets
        assert (hp["epochs"], hp["alpha_every"], hp["alpha_grad"], hp["views"], hp["select"]) == \
            (300, 10, "accumulated", 1, "val")
    assert resolve_hparams(cls, "dtd", 4, "official")["templates"] == "dataset"
    # "current": α steps with its own epoch's gradient, not the sum since epoch 0
    r = ref("lpp")
    x, y, text = r["train_features"], r["train_labels"], r["text_weights"].t()
    W, a = L.init_classifier(x, y, text, 5)
    grads = []
    L.fit(x, y, x @ text.t(), None, W, r["init"]["b"], torch.full((5,), a), 39.0, 7.9, 12, 10, accumulate=False,
          select="last", on_epoch=lambda e, s, *_: grads.append(s.alpha_grad.clone()))
    assert not torch.equal(grads[1], r["steps"][1]["alpha_grad_accum"][0])
    close(grads[0], r["steps"][0]["alpha_grad_accum"][0], TOL, relative_to_max=True)  # epoch 0: the same


@pytest.mark.parametrize("bad,words", [
    ({"epochs": 0}, "epochs=0"), ({"alpha_every": 0}, "alpha_every=0"), ({"views": -1}, "views=-1"),
    ({"alpha_grad": "zeroed"}, "alpha_grad='zeroed'"), ({"precision": "bf16"}, "precision='bf16'"),
    ({"select": "test"}, "select='test'"),
])
def test_lpp_bad_values_are_refused(bad, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        resolve_hparams(get_method("lpp"), "dtd", 4, "clean", bad)


def test_lpp_bad_value_is_refused_before_any_work(cli, tmp_path):
    from conftest import refused

    out = tmp_path / "run"
    proc = cli("run", "--data-root", tmp_path / "no-data", "--dataset", "dtd", "--method", "lpp", "--shots", 4,
               "--seed", 1, "--backbone", "fewclip-tiny-vit", "--pretrained", "none", "--out", out,
               "--set", "epochs=0")
    refused(proc, "epochs=0", "at least 1")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- GDA


def _gda_task(r, preset, dataset="dtd", protocol="fewshot", **overrides):
    hp = resolve_hparams(get_method("gda"), dataset, r["config"]["shots"], preset, overrides, protocol=protocol)
    raw, labels = r["train_views_raw"], r["train_labels"]
    views = Features([f"t{i}" for i in range(raw.shape[1])], labels, _norm(raw), raw)
    train = Features(views.paths, labels, _norm(raw[0]), raw[0])
    test_raw = r.get("test_features_raw", r.get("test_base_features_raw"))
    test = _feats(test_raw, r.get("test_labels", r.get("test_base_labels")), "x")
    val = _feats(r["val_features_raw"], r["val_labels"], "v")
    text = r.get("clip_weights", r.get("clip_weights_base"))
    # the reference's val split is the dataset's full one: offered both as the few-shot and the full val
    return FeatureTask(_classes(text), train, views, val, dataset, r["config"]["shots"], 1, preset, hp, CPU,
                       get_spec(dataset), test=test if preset == "official" else None, full_val=val)


def test_gda_means_covariance_precision_and_classifier():
    r = ref("gda")
    views = _norm(r["train_views_raw"])
    vecs, labels = views.reshape(-1, views.shape[-1]), r["train_labels"].repeat(views.shape[0])
    close(vecs, r["vecs"], 1e-7)  # pass after pass
    assert torch.equal(labels, r["vecs_labels"])
    mus = G.class_means(vecs, labels, 6)
    close(mus, r["mus"], 1e-7)
    precision, argument, rank = G.shrinkage_precision(vecs, labels, mus)
    assert rank == 64  # the shrinkage makes it full rank
    close(argument, r["pinv_argument"], TOL, relative_to_max=True)  # (n−1)·cov + tr(cov)·I
    close(precision, r["cov_inv"], TOL, relative_to_max=True)  # d · pinv(...)
    W, b = G.linear_head(mus, precision)
    close(W, r["W"], TOL, relative_to_max=True)
    close(b, r["b"], TOL, relative_to_max=True)
    assert torch.log(r["ps"]).allclose(torch.full((6,), -torch.log(torch.tensor(6.0))))  # uniform priors


def test_gda_scatter_is_chunk_independent(monkeypatch):
    """The scatter is accumulated over chunks of rows (ImageNet's 160,000 views): chunks of 7 rows give it too."""
    r = ref("gda")
    views = _norm(r["train_views_raw"])
    vecs, labels = views.reshape(-1, views.shape[-1]), r["train_labels"].repeat(views.shape[0])
    monkeypatch.setattr(G, "CHUNK", 7)
    precision, _, _ = G.shrinkage_precision(vecs, labels, G.class_means(vecs, labels, 6))
    close(precision, r["cov_inv"], TOL, relative_to_max=True)


def test_gda_logits_and_alpha_search_first_strict_maximum():
    r = ref("gda")
    W, b, text = r["W"], r["b"], r["clip_weights"].t()
    close(_norm(r["val_features_raw"]), r["val_features"], 1e-7)
    for j, alpha in enumerate(r["alpha_grid"]):
        close(G.gda_logits(r["val_features"], text, W, b, alpha), r["val_logits_per_alpha"][j], TOL,
              relative_to_max=True)
    found = G.search_alpha(r["val_features"], r["val_labels"], text, W, b, r["alpha_grid"], 0.1)
    assert found["accs"] == pytest.approx(r["val_acc_per_alpha"], abs=1e-9)
    assert found["alpha"] == r["best_alpha"] and found["acc"] == pytest.approx(r["best_val_acc"])
    assert G.ALPHAS == r["alpha_grid"]
    # ties: the first α keeps the lead; no α above 0 %: the default 0.1 stays
    tie = G.search_alpha(r["val_features"], r["val_labels"], text, W, b, [10.0, 100.0], 0.1)
    assert tie["accs"][0] == tie["accs"][1] and tie["alpha"] == 10.0
    none = G.search_alpha(r["val_features"], torch.full_like(r["val_labels"], -1), text, W, b, [1.0, 10.0], 0.1)
    assert none["alpha"] == 0.1 and none["acc"] == 0.0


@pytest.mark.parametrize("preset", ["official", "clean"])
def test_gda_method_reproduces_the_official_run(preset):
    r = ref("gda")
    task = _gda_task(r, preset)
    m = get_method("gda")(task.hp)
    info = m.setup(task)
    assert info["search_split"] == ("full_val" if preset == "official" else "fewshot_val")
    assert info["alpha"] == r["best_alpha"] and info["n_vectors"] == r["center_vecs_count"]
    assert list(info["alpha_accs"].values()) == pytest.approx(r["val_acc_per_alpha"], abs=1e-9)
    close(m.W, r["W"], TOL, relative_to_max=True)
    close(m.b, r["b"], TOL, relative_to_max=True)
    logits = m.logits(_norm(r["test_features_raw"]), task.classes)
    close(logits, r["test_logits"], TOL, relative_to_max=True)
    assert 100.0 * (logits.argmax(1) == r["test_labels"]).double().mean().item() == pytest.approx(r["test_acc"])


def test_gda_base_to_new_estimators():
    """main_base2new.py: the pooled precision on the base classes (a true pseudo-inverse: 80 views in
    512 dimensions), α searched on base val, the new classes synthesised from their text features."""
    r = ref("gda")["base2new"]
    task = _gda_task(r, "official", protocol="base2new")
    assert task.hp["estimator"] == "pooled"
    m = get_method("gda")(task.hp)
    info = m.setup(task)
    assert info["precision_rank"] == 76 < 512  # 4 classes × (20 views − 1)
    close(G.class_means(task.views.features.reshape(-1, 512), r["train_labels"].repeat(10), 4), r["mus"], 1e-7)
    # the official fp32 pinv of a rank-76 matrix carries ~1e-5 of its own round-off (the reference README's
    # independent float64 cross-check lands at 1.4e-5 too); everything downstream is within 1e-5
    close(m.W, r["W"], 3e-5, relative_to_max=True)
    close(m.b, r["b"], TOL, relative_to_max=True)
    assert list(info["alpha_accs"].values()) == pytest.approx(r["val_acc_per_alpha"], abs=1e-9)
    assert info["alpha"] == r["best_alpha"] == 10.0  # 10 and 100 tie: the first is kept
    base = m.logits(_norm(r["test_base_features_raw"]), task.classes)
    close(base, r["test_base_logits"], TOL, relative_to_max=True)
    assert 100.0 * (base.argmax(1) == r["test_base_labels"]).double().mean().item() == r["base_acc"]
    vecs = task.views.features.reshape(-1, 512)
    mu, W_new, b_new = G.unseen_head(vecs, r["clip_weights_new"].t(), 64, 16)
    close(mu, r["mu_new"], 1e-6)
    close(W_new, r["W_new"], TOL, relative_to_max=True)
    close(b_new, r["b_new"], TOL, relative_to_max=True)
    new_classes = ClassSet([f"n{i}" for i in range(4)], r["clip_weights_new"].t().contiguous(), None)
    new = m.logits(_norm(r["test_new_features_raw"]), new_classes)
    close(new, r["test_new_logits"], TOL, relative_to_max=True)
    assert 100.0 * (new.argmax(1) == r["test_new_labels"]).double().mean().item() == r["new_acc"]


def test_gda_official_selects_on_full_val_and_imagenet_test_clean_on_few_shot_val():
    cls = get_method("gda")
    for protocol in ("fewshot", "base2new", "dg"):
        assert resolve_hparams(cls, "imagenet", 16, "official", protocol=protocol)["search_split"] == "test"
        assert resolve_hparams(cls, "dtd", 16, "official", protocol=protocol)["search_split"] == "full_val"
        assert resolve_hparams(cls, "imagenet", 16, "clean", protocol=protocol)["search_split"] == "fewshot_val"
    needs = cls(resolve_hparams(cls, "imagenet", 16, "official")).data_needs()
    assert needs.test_for_selection and not needs.full_val and needs.views == 10 and needs.templates == "ensemble7"
    needs = cls(resolve_hparams(cls, "dtd", 16, "official")).data_needs()
    assert needs.full_val and not needs.test_for_selection and not needs.fewshot_val
    needs = cls(resolve_hparams(cls, "imagenet", 16, "clean")).data_needs()
    assert not (needs.full_val or needs.test_for_selection) and needs.fewshot_val and needs.templates == "dataset"
    # the test set is never offered to a clean cell: asking for it there is an error, not a silent fallback
    r = ref("gda")
    task = _gda_task(r, "clean", search_split="test")
    with pytest.raises(ConfigError, match="official preset"):
        cls(task.hp).setup(task)


@pytest.mark.parametrize("bad,words", [
    ({"views": 0}, "views=0"), ({"alphas": [-1.0]}, "alphas=[-1.0]"), ({"alphas": []}, "alphas=[]"),
    ({"neighbours": 1}, "neighbours=1"), ({"search_split": "train"}, "search_split='train'"),
    ({"estimator": "ledoit_wolf"}, "estimator='ledoit_wolf'"), ({"default_alpha": -0.1}, "default_alpha=-0.1"),
])
def test_gda_bad_values_are_refused(bad, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        resolve_hparams(get_method("gda"), "dtd", 4, "clean", bad)


def test_gda_bad_value_is_refused_before_any_work(cli, tmp_path):
    from conftest import refused

    out = tmp_path / "run"
    proc = cli("run", "--data-root", tmp_path / "no-data", "--dataset", "dtd", "--method", "gda", "--shots", 4,
               "--seed", 1, "--backbone", "fewclip-tiny-vit", "--pretrained", "none", "--out", out,
               "--set", "neighbours=1")
    refused(proc, "neighbours=1", "2 or more")
    assert not out.exists()


# ------------------------------------------------------------------------------- through the engine


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    from fewclip.data.fixtures import write_fixture

    root = tmp_path_factory.mktemp("data")
    write_fixture("oxford_pets", root, n_classes=4, n_train=4, n_val=3, n_test=3)
    return root


def test_base_to_new_cells_gda_scores_new_classes_lpp_is_na(pets, tmp_path):
    """One base-to-new cell each through `run_cell` on the tiny random CLIP: GDA's official cell uses
    the pooled estimator and searches α on the base classes' full val split, and scores the new classes
    with its unseen-class estimator; LP++ (a class-specific head, fp16 under official) is n/a there."""
    import json

    from fewclip.engine.run import RunSpec, run_cell

    def cell(method, preset, **overrides):
        out = tmp_path / f"{method}_{preset}"
        spec = RunSpec(data_root=str(pets), dataset="oxford_pets", method=method, backbone="fewclip-tiny-vit",
                       pretrained="none", out=str(out), shots=2, seed=1, preset=preset,
                       features=str(tmp_path / "features"), overrides=overrides)
        spec.protocol = "base2new"
        return run_cell(spec), json.loads((out / "eval_new" / "metrics.json").read_text()), out

    base, new, _ = cell("gda", "official")
    assert base["hparams"]["estimator"] == "pooled" and base["selected"]["search_split"] == "full_val"
    assert base["selected"]["search_n"] == 2 * 3  # the 2 base classes' whole val split
    assert base["top1"] is not None and new["top1"] is not None and "na_reason" not in new
    base, new, _ = cell("gda", "clean")
    assert base["selected"]["search_split"] == "fewshot_val" and new["top1"] is not None
    base, new, out = cell("lpp", "official", epochs=20)
    assert base["top1"] is not None and new["top1"] is None and "unseen" in new["na_reason"]
    assert 1 <= base["selected"]["epoch_kept"] <= 20 and base["trainable_params"] > 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)["state"]
    assert {v.dtype for v in state.values()} == {torch.float16}
