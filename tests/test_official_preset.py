"""The `official` preset against the official implementations' own outputs (issue 16).

tests/data/official/ holds what the official code (CoOp/CoCoOp/zsclip, Tip-Adapter, CoOp's lpclip,
Dassl) computed on a tiny random CLIP and fixed inputs (README.md there documents every key). These
tests feed the same inputs through fewclip's modules under `official` and compare, tolerance 1e-5
in fp32. Gradients (max|g| up to 50, as the README advises) and logits (100 × a cosine: the ~1e-7
round-off of open_clip's image tower against the official one becomes ~1e-5) are compared
relative to their max; features, losses and schedules absolutely.

Official parameter names → fewclip names (the stored `params.*` / `grads.*` keys):

| official (CustomCLIP of trainers/coop.py, cocoop.py) | fewclip (method attribute)        |
|------------------------------------------------------|-----------------------------------|
| `prompt_learner.ctx`                                 | `prompt.ctx`                      |
| `prompt_learner.meta_net.linear1.{weight,bias}`      | `meta_net.0.{weight,bias}`        |
| `prompt_learner.meta_net.linear2.{weight,bias}`      | `meta_net.2.{weight,bias}`        |
| Tip-Adapter `cache_keys` [d, N] / `adapter.weight`   | `keys` [N, d] (the transpose)     |
| Tip-Adapter `clip_weights` [d, C]                    | `ClassSet.text_features` [C, d]   |
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fewclip.data.datasets import get_spec
from fewclip.engine.features import Features
from fewclip.engine.inputs import FeatureTask
from fewclip.engine.train import TrainConfig, lr_at, train
from fewclip.methods import ClassSet, get_method, resolve_hparams
from fewclip.models.templates import class_text_features
from official_ref import backbone, close, ref

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = 1e-5
CPU = torch.device("cpu")

# official name -> fewclip name (state_dict key of the method)
OFFICIAL_TO_FEWCLIP = {
    "prompt_learner.ctx": "prompt.ctx",
    "prompt_learner.meta_net.linear1.weight": "meta_net.0.weight",
    "prompt_learner.meta_net.linear1.bias": "meta_net.0.bias",
    "prompt_learner.meta_net.linear2.weight": "meta_net.2.weight",
    "prompt_learner.meta_net.linear2.bias": "meta_net.2.bias",
}


def _norm(x):
    return x / x.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def vit():
    return backbone("vit")


@pytest.fixture(scope="module")
def rn():
    return backbone("rn")


# ---------------------------------------------------------------------------- zero-shot CLIP


def test_zeroshot_text_features_and_logits_vit(vit):
    r = ref("zeroshot")
    names = r["class_names"]
    text = class_text_features(vit, names, "dataset", r["template"])
    close(text, r["text_features_dataset"], TOL)
    close(text.t(), r["clip_weights_dataset"], TOL)
    ens = class_text_features(vit, names, "ensemble7", r["template"])
    close(ens.t(), r["clip_weights_ensemble7"], TOL)
    with torch.no_grad():
        raw = vit.model.encode_image(r["images"])
    close(raw, r["image_features_raw"], TOL)
    f = vit.encode_images(r["images"])
    close(f, r["image_features"], TOL)
    zs = get_method("zeroshot")
    method = zs(resolve_hparams(zs, "oxford_pets", 16, "official"))
    close(method.logits(f, ClassSet(names, text)), r["logits_dataset"], TOL)
    # Tip-Adapter's inline 100. * f @ W with the ensemble
    close(method.logits(f, ClassSet(names, ens)), r["logits_ensemble7"], TOL)


def test_zeroshot_resnet(rn):
    r = ref("zeroshot")
    text = class_text_features(rn, r["class_names"], "dataset", r["template"])
    close(text, r["rn_text_features_dataset"], TOL)
    with torch.no_grad():
        close(rn.model.encode_image(r["images"]), r["rn_image_features_raw"], TOL)
    f = rn.encode_images(r["images"])
    zs = get_method("zeroshot")
    method = zs(resolve_hparams(zs, "oxford_pets", 16, "official"))
    close(method.logits(f, ClassSet(r["class_names"], text)), r["rn_logits_dataset"], TOL)


def test_ensemble7_is_tip_adapters_list():
    from fewclip.models.templates import prompt_texts

    r = ref("zeroshot")
    assert prompt_texts("x", "ensemble7", "{}") == [t.format("x") for t in r["templates7"]]


# ---------------------------------------------------------------------------- CoOp / CoCoOp


def _prompt_method(bb, name: str, class_names: list[str], protocol: str = "fewshot", **overrides):
    """fewclip's CoOp/CoCoOp set up on the tiny CLIP under `official` (fp32 weights until
    `to_half`, which the engine calls for the preset's pure fp16)."""
    cls = get_method(name)
    hp = resolve_hparams(cls, "oxford_pets", 16, "official", overrides, protocol)
    method = cls(hp)
    classes = ClassSet(list(class_names), torch.zeros(len(class_names), bb.embed_dim), torch.arange(len(class_names)))
    task = SimpleNamespace(backbone=bb, classes=classes, device=CPU, preset="official", hp=hp)
    method.setup(task)
    return method, classes


def _load_official(method, params: dict) -> None:
    """Copy the official tensors into fewclip's modules (name mapping OFFICIAL_TO_FEWCLIP)."""
    state = method.state_dict()
    mapped = {OFFICIAL_TO_FEWCLIP[k]: v for k, v in params.items()}
    assert set(mapped) == set(state), (sorted(mapped), sorted(state))
    method.load_state_dict(mapped)


def _grads(method) -> dict:
    named = dict(method.named_parameters())
    return {k: named[v].grad for k, v in OFFICIAL_TO_FEWCLIP.items() if v in named}


COOP_VARIANTS = ["rand16_end", "rand16_middle", "rand16_front", "init_a_photo_of_a_end", "csc16_end"]


def _coop_overrides(cfg: dict) -> dict:
    c = {k.removeprefix("TRAINER.COOP."): v for k, v in cfg.items()}
    return {"n_ctx": int(c["N_CTX"]), "ctx_init": c["CTX_INIT"], "csc": bool(c["CSC"]),
            "class_token_position": c["CLASS_TOKEN_POSITION"]}


@pytest.mark.parametrize("variant", COOP_VARIANTS)
def test_coop_logits_loss_gradients(vit, variant):
    r = ref("coop")
    v = r["variants"][variant]
    method, classes = _prompt_method(vit, "coop", r["class_names"], **_coop_overrides(v["cfg"]))
    assert method.prompt.n_ctx == v["n_ctx"]
    bank = method.prompt.bank(classes.names)
    assert bank.name_lens == v["name_lens"]
    L = bank.tokens.shape[1]
    assert torch.equal(bank.tokens, v["tokenized_prompts"][:, :L]) and not v["tokenized_prompts"][:, L:].any()
    if variant.startswith("init"):  # the official init: embeddings of the words' first n_ctx tokens
        close(method.prompt.ctx.detach(), v["ctx_init_value"], 0.0)
    _load_official(method, v["params"])
    if "prompts_head" in v:
        emb = method.prompt.embeddings(bank)
        n = min(emb.shape[1], v["prompts_head"].shape[1])
        close(emb[:, :n].detach(), v["prompts_head"][:, :n], TOL)
    method.train()
    images, labels = r["images"], r["labels"]
    logits = method.logits(images, classes)
    close(logits.detach(), v["logits"], TOL, relative_to_max=True)
    from fewclip.models.prompts import encode_prompts

    with torch.no_grad():
        close(encode_prompts(method.prompt, bank, class_index=method.class_index(classes)), v["text_features"], TOL)
    loss = method.loss((images, labels), epoch=1)
    assert abs(loss.item() - v["loss"]) <= TOL
    loss.backward()
    for name, want in v["grads"].items():
        close(_grads(method)[name], want, TOL, relative_to_max=True)


def test_coop_words_not_tokens_and_csc_with_words_refused(vit):
    from fewclip.errors import ConfigError

    # "a_photo-of" is 2 words but 4 BPE tokens (a, photo, -, of): the official n_ctx is 2, the
    # first 2 token embeddings learn, the rest of the words stay in the frozen suffix
    method, classes = _prompt_method(vit, "coop", ["cat"], ctx_init="a_photo-of")
    assert method.prompt.n_ctx == 2
    tok = vit.tokenizer(["a photo-of"])[0]
    with torch.no_grad():
        emb = vit.model.token_embedding(tok[None])[0]
        close(method.prompt.ctx, emb[1:3], 0.0)
        bank = method.prompt.bank(["cat"])
        close(bank.suffix[0, :2], emb[3:5], 0.0)
    with pytest.raises(ConfigError, match="csc.*ctx_init"):
        _prompt_method(vit, "coop", ["cat", "dog"], ctx_init="a photo of a", csc=True)


def test_cocoop_logits_loss_gradients(vit):
    r = ref("cocoop")  # the official run: vit_b16_c4_ep10_batch1_ctxv1, CoCoOp's protocols' config
    method, classes = _prompt_method(vit, "cocoop", r["class_names"], protocol="base2new")
    assert method.prompt.n_ctx == r["n_ctx"] == 4
    close(method.prompt.ctx.detach(), r["ctx_init_value"], 0.0)
    _load_official(method, r["params"])
    images, labels = r["images"], r["labels"]
    with torch.no_grad():
        f = method.image_features(images)
        close(f, r["image_features"], TOL)
        close(method.meta_net(f), r["meta_net_out"], TOL)
        method.eval()
        close(method.logits(images, classes), r["logits"], TOL, relative_to_max=True)
    method.train()
    loss = method.loss((images, labels), epoch=1)
    assert abs(loss.item() - r["loss"]) <= TOL
    loss.backward()
    grads = _grads(method)
    for name, want in r["grads"].items():
        close(grads[name], want, TOL, relative_to_max=True)


# ---------------------------------------------------------------------------- Dassl schedules


@pytest.mark.parametrize("case", ["coop_vit_b16_ep10", "coop_vit_b16_ep50", "dpt_visual_ep60", "dpt_text_ep60"])
def test_dassl_lr_per_epoch(case):
    c = ref("schedules")["lr"][case]
    o = c["optim"]
    cfg = TrainConfig(epochs=o["MAX_EPOCH"], lr=o["LR"], warmup_epochs=o["WARMUP_EPOCH"], warmup_lr=o["WARMUP_CONS_LR"])
    got = [lr_at(o["LR"], e, 0, 1, cfg, o["WARMUP_EPOCH"]) for e in range(o["MAX_EPOCH"])]
    close(torch.tensor(got), torch.tensor(c["lr_per_epoch"]), 1e-12)
    assert (c["sgd"]["momentum"], c["sgd"]["weight_decay"], c["sgd"]["dampening"], c["sgd"]["nesterov"]) == \
        (0.9, 5e-4, 0, 0)
    hp = resolve_hparams(get_method("coop"), "dtd", 16, "official")
    assert (hp["momentum"], hp["weight_decay"], hp["optimizer"]) == (0.9, 5e-4, "sgd")


@pytest.mark.parametrize("case", range(4))
def test_dassl_batches_per_epoch_feature_methods(case):
    """CLIP-Adapter (a Dassl trainer) drops the last incomplete batch under `official`."""
    from fewclip.engine.inputs import view_batches

    b = ref("schedules")["batches"][case]
    n, bs = b["n"], b["batch_size"]
    cls = get_method("clip_adapter")
    hp = resolve_hparams(cls, "dtd", 16, "official")
    views = Features([f"p{i}" for i in range(n)], torch.zeros(n, dtype=torch.long), torch.zeros(2, n, 4))
    task = SimpleNamespace(views=views, train=views, device=CPU, hp=hp)
    sizes = [len(y) for _, y in view_batches(task, bs, 1, cls(hp).data_needs().drop_last)(0)]
    assert sizes == b["batch_sizes"] and len(sizes) == b["batches_per_epoch"]


def test_dassl_batches_per_epoch_image_methods(monkeypatch):
    """The prompt methods' train loader (both presets): Dassl's drop_last rule."""
    from fewclip.data.datasets import Item
    from fewclip.data.images import ImageItems
    from fewclip.engine.inputs import ImageInputs, ImageSet

    monkeypatch.setattr(ImageItems, "__getitem__", lambda self, i: (torch.zeros(3, 4, 4), self.items[i].label))
    for b in ref("schedules")["batches"]:
        items = [Item(f"p{i}", 0, "c") for i in range(b["n"])]
        task = SimpleNamespace(train=ImageSet(None, items, 4))
        inputs = ImageInputs.__new__(ImageInputs)
        inputs.device, inputs.spec = CPU, SimpleNamespace(workers=0)
        for name in ("coop", "cocoop", "vpt", "vlp", "dpt"):
            hp = {**resolve_hparams(get_method(name), "dtd", 16, "official"), "batch_size": b["batch_size"]}
            sizes = [len(y) for _, y in inputs.batches(task, get_method(name)(hp).data_needs(), seed=1)(0)]
            assert sizes == b["batch_sizes"] and bool(b["drop_last"]) == (b["n"] >= b["batch_size"]), (name, b)


# ---------------------------------------------------------------------------- Tip-Adapter(-F)


def _tip_task(method: str, preset: str = "official", **overrides):
    """Tip-Adapter's stored inputs as a FeatureTask (oxford_pets: the config's α 1.17, scale [7, 3])."""
    r = ref("tip")
    raw_views, labels = r["train_views_raw"], r["train_labels"]
    n = raw_views.shape[1]
    paths = [f"t{i}" for i in range(n)]
    views = Features(paths, labels, _norm(raw_views), raw_views)
    train = Features(paths, labels, _norm(raw_views[0]), raw_views[0])
    val = Features([f"v{i}" for i in range(len(r["val_labels"]))], r["val_labels"], _norm(r["val_features_raw"]),
                   r["val_features_raw"])
    test = Features([f"x{i}" for i in range(len(r["test_labels"]))], r["test_labels"], _norm(r["test_features_raw"]),
                    r["test_features_raw"])
    classes = ClassSet([f"c{i}" for i in range(r["clip_weights"].shape[1])], r["clip_weights"].t().contiguous(),
                       torch.arange(r["clip_weights"].shape[1]))
    cls = get_method(method)
    hp = resolve_hparams(cls, "oxford_pets", 8, preset, overrides)
    task = FeatureTask(classes, train, views, val, "oxford_pets", 8, 1, preset, hp, CPU, get_spec("oxford_pets"),
                       test=test, full_val=val)  # official: the search runs on the (full) val split
    return cls, task, r


def test_tip_config_is_the_reference_config():
    r = ref("tip")
    hp = resolve_hparams(get_method("tip_adapter_f"), "oxford_pets", 8, "official")
    c = r["config"]
    assert (hp["init_alpha"], hp["init_beta"], [hp["beta_max"], hp["alpha_max"]]) == \
        (c["init_alpha"], c["init_beta"], c["search_scale"])
    assert (hp["lr"], hp["views"], hp["epochs"]) == (c["lr"], c["augment_epoch"], c["train_epoch"])
    assert hp["search_split"] == "full_val" and hp["select_on_test"] is True


def test_tip_keys_logits_and_search():
    cls, task, r = _tip_task("tip_adapter", search=False)
    m = cls(task.hp)
    info = m.setup(task)
    close(m.keys, r["cache_keys"].t(), TOL)  # normalise(mean of the RAW views)
    close(m.values, r["cache_values"].float(), 0.0)
    close(task.val.features, r["val_features"], TOL)
    zs = get_method("zeroshot")
    close(zs(zs.hparams).logits(task.val.features, task.classes), r["zs_logits_val"], TOL, relative_to_max=True)
    val_logits = m.logits(task.val.features, task.classes)
    close(val_logits, r["tip_logits_val_init"], TOL, relative_to_max=True)
    assert 100.0 * (val_logits.argmax(-1) == task.val.labels).float().mean().item() == r["tip_acc_val_init"]
    assert (info["alpha"], info["beta"]) == (1.17, 1.0)
    # the search: 16 grid points tie at the best accuracy; the official loop keeps the first (beta-major, strict >)
    m.hp["search"] = True
    found = m.search(task)
    assert found["search_split"] == "full_val"
    assert found["beta"] == pytest.approx(r["search_best_beta"], abs=1e-12)
    assert found["alpha"] == pytest.approx(r["search_best_alpha"], abs=1e-12)
    assert found["search_acc"] == r["search_best_acc"]
    test_logits = m.logits(task.test.features, task.classes)
    close(test_logits, r["tip_logits_test_best"], TOL, relative_to_max=True)
    assert 100.0 * (test_logits.argmax(-1) == task.test.labels).float().mean().item() == r["tip_acc_test_best"]


def test_tip_search_grid_accuracies():
    """Every point of the official 200 × 20 grid (val accuracy), not only the winner."""
    from fewclip.methods._tip import search_grid, tip_logits

    cls, task, r = _tip_task("tip_adapter", search=False)
    m = cls(task.hp)
    m.setup(task)
    betas, alphas = search_grid(7, 3)
    x, y = task.val.features, task.val.labels
    for i in range(0, 200, 7):
        for j in range(20):
            acc = 100.0 * (tip_logits(x, m.text, m.keys, m.values, alphas[j], betas[i]).argmax(-1) == y).float().mean()
            assert acc.item() == pytest.approx(r["search_acc_grid"][i, j].item(), abs=1e-4), (i, j)


def _f_batches(r):
    """The official Tip-Adapter-F batches (README: f_batch_perm / f_batch_view), normalised."""
    bs = r["f_batch_size"]

    def batches(epoch):
        perm, view = r["f_batch_perm"][epoch], r["f_batch_view"][epoch]
        for j in range(0, len(perm), bs):
            p, v = perm[j : j + bs], view[j : j + bs]
            yield _norm(r["train_views_raw"][v, p]), r["train_labels"][p]

    return batches


def _train_tip_f(preset="official", precision="fp32", **cfg_overrides):
    """Tip-Adapter-F trained on the reference's batches, in `precision`: fp32 by default, as the
    reference ran the official fp16 path (tests/data/official/README.md); "fp16" is the official
    preset's pure half, which the engine runs on the CPU too."""
    from fewclip.engine.run import train_config

    cls, task, r = _tip_task("tip_adapter_f", preset)
    m = cls(task.hp)
    m.setup(task)
    cfg = train_config({**task.hp, "precision": precision}, {})
    for k, v in cfg_overrides.items():
        setattr(cfg, k, v)
    steps, lrs = [], []

    def hook(opt, args, kwargs):
        steps.append(m.keys.detach().clone())
        lrs.append(opt.param_groups[0]["lr"])

    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(hook)
    try:
        stats = train(m, _f_batches(r), cfg, CPU, on_epoch_end=lambda e: m.epoch_end(task, e))
    finally:
        handle.remove()
    return m, task, r, steps, lrs, stats


def test_tip_adapter_f_steps_selection_and_report():
    m, task, r, steps, lrs, stats = _train_tip_f()
    assert len(steps) == 20 * r["f_iters_per_epoch"] == stats["steps"]
    close(torch.tensor(lrs), torch.tensor(r["f_lr_per_iter"]), 1e-12)
    close(steps[0], r["f_keys_after_step1"], TOL)
    close(steps[4], r["f_keys_after_step5"], TOL)
    close(steps[-1], r["f_keys_after_last_step"], TOL)
    info = m.finish(task)  # official: the best test epoch's keys, then the second search on val
    assert info["selected_on"] == "test" and info["epoch_kept"] == r["f_best_epoch"] + 1
    assert info["epoch_test_acc"] == pytest.approx(r["f_best_acc"])
    close(m.keys, r["f_keys_best"], TOL)
    assert info["beta"] == pytest.approx(r["f_search_best_beta"], abs=1e-12)
    assert info["alpha"] == pytest.approx(r["f_search_best_alpha"], abs=1e-12)
    assert info["search_acc"] == r["f_search_best_acc"]
    logits = m.logits(task.test.features, task.classes)
    close(logits, r["f_test_logits_final"], TOL, relative_to_max=True)
    top1 = 100.0 * (logits.argmax(-1) == task.test.labels).float().mean().item()
    assert top1 == r["f_test_acc_final"]
    rep = m.report(top1)
    assert rep["top1"] == r["f_printed_test_acc"] == max(r["f_best_acc"], r["f_test_acc_final"])
    assert (rep["top1_after_search"], rep["top1_best_epoch"]) == (r["f_test_acc_final"], r["f_best_acc"])


def test_tip_adapter_f_reported_number_is_a_max_only_off_imagenet():
    m, task, r, *_ = _train_tip_f()
    m.finish(task)
    assert m.report(50.0)["top1"] == r["f_best_acc"]  # the best epoch beats the searched model
    m._take_max = False  # what finish() sets for ImageNet (main_imagenet.py prints the search's accuracy)
    rep = m.report(50.0)
    assert "top1" not in rep and rep["top1_after_search"] == 50.0 and rep["top1_best_epoch"] == r["f_best_acc"]
    cls, task, _ = _tip_task("tip_adapter_f", "official")
    task.dataset = "imagenet"
    mi = cls(task.hp)
    mi.setup(task)
    mi.epoch_end(task, 0)
    mi.finish(task)
    assert "top1" not in mi.report(1.0)


def test_tip_templates_imagenet_ensemble_in_both_presets():
    for name in ("tip_adapter", "tip_adapter_f"):
        cls = get_method(name)
        for preset in ("clean", "official"):
            assert resolve_hparams(cls, "imagenet", 16, preset)["templates"] == "ensemble7"
            assert resolve_hparams(cls, "imagenet", 16, preset, protocol="dg")["templates"] == "ensemble7"
            assert resolve_hparams(cls, "dtd", 16, preset)["templates"] == "dataset"
            assert resolve_hparams(cls, "dtd", 16, preset, {"templates": "ensemble7"})["templates"] == "ensemble7"
            assert resolve_hparams(cls, "imagenet", 16, preset, {"templates": "dataset"})["templates"] == "dataset"


# ---------------------------------------------------------------------------- lpclip


LP_RUNS = range(15)


@pytest.mark.parametrize("run", LP_RUNS)
def test_lpclip_c_search_accuracy_predictions(run):
    """lpclip on its stored raw features and selected rows. The lbfgs fits depend on the scikit-learn
    / scipy versions: with the reference's scikit-learn every C, accuracy and prediction must be equal;
    with another one only what is robust (the chosen C within a factor 10, the accuracy within 3 points,
    97% of the predictions)."""
    import sklearn

    r = ref("lpclip")
    run_ref = r["runs"][run]
    tr, va = torch.tensor(run_ref["train_idx"]), torch.tensor(run_ref["val_idx"])

    def feats(x, y, prefix):
        return Features([f"{prefix}{i}" for i in range(len(y))], y, _norm(x), x)

    train_x, val_x = r["train_features"][tr], r["val_features"][va]
    train_f = feats(train_x, r["train_labels"][tr], "t")
    val_f = feats(val_x, r["val_labels"][va], "v")
    test_f = feats(r["test_features"], r["test_labels"], "x")
    n_cls = int(r["train_labels"].max()) + 1
    classes = ClassSet([f"c{i}" for i in range(n_cls)], torch.zeros(n_cls, 64), torch.arange(n_cls))
    cls = get_method("linear_probe")
    hp = resolve_hparams(cls, "dtd", run_ref["shot"], "official")
    task = FeatureTask(classes, train_f, None, val_f, "dtd", run_ref["shot"], run_ref["seed"], "official", hp, CPU,
                       get_spec("dtd"))
    m = cls(hp)
    info = m.setup(task)
    assert info["fit_on"] == "raw" and m.data_needs().reads_raw
    pred = m.logits(test_f.raw, classes).argmax(-1)
    acc = 100.0 * (pred == test_f.labels).float().mean().item()
    if sklearn.__version__ == r["versions"]["sklearn"]:
        assert info["c_grid_acc"] == {f"{c:g}": 100.0 * a for c, a in zip(run_ref["init_search_C"],
                                                                          run_ref["init_search_val_acc"])}
        for ours, theirs in zip(info["c_search"], run_ref["steps"]):
            assert ours["C_left"] == pytest.approx(theirs["c_left"], rel=1e-9)
            assert ours["C_right"] == pytest.approx(theirs["c_right"], rel=1e-9)
            assert ours["acc_left"] == pytest.approx(100 * theirs["val_acc_left"])
            assert ours["acc_right"] == pytest.approx(100 * theirs["val_acc_right"])
        assert info["C"] == pytest.approx(run_ref["C"], rel=1e-9)
        assert acc == pytest.approx(run_ref["test_acc"])
        assert torch.equal(pred, run_ref["test_pred"])
    else:
        assert abs(math.log10(info["C"]) - math.log10(run_ref["C"])) <= 1
        assert abs(acc - run_ref["test_acc"]) <= 3
        assert (pred == run_ref["test_pred"]).float().mean() >= 0.97


def test_linear_probe_clean_fits_normalised_features():
    cls = get_method("linear_probe")
    assert resolve_hparams(cls, "dtd", 4, "clean")["fit_on"] == "normalised"
    assert resolve_hparams(cls, "dtd", 4, "official")["fit_on"] == "raw"
    assert not cls(resolve_hparams(cls, "dtd", 4, "clean")).data_needs().reads_raw


# ---------------------------------------------------------------------------- precision (SPEC §2.2)


def test_precision_official_is_pure_fp16_clean_keeps_fp32_master_weights():
    from fewclip.engine.train import resolve_precision

    gpu = torch.device("cuda")  # resolved only, nothing runs on it
    for name in ("coop", "cocoop", "vpt", "vlp", "dpt", "tip_adapter_f"):
        cls = get_method(name)
        official = resolve_precision(resolve_hparams(cls, "dtd", 16, "official")["precision"], gpu)
        assert official.half and not official.scaler and official.autocast is None, name
        assert official.describe()["weights"] == "fp16" and official.describe()["grad_scaler"] is False
        clean = resolve_precision(resolve_hparams(cls, "dtd", 16, "clean")["precision"], gpu)
        assert not clean.half and clean.autocast is not None and clean.describe()["weights"] == "fp32", name
    ca = get_method("clip_adapter")
    assert resolve_precision(resolve_hparams(ca, "dtd", 16, "official")["precision"], gpu).describe()["used"] == "fp32"
    amp = resolve_precision("amp", gpu)  # the official code's PREC amp, for comparison
    assert amp.scaler and amp.autocast == torch.float16 and not amp.half
    # what the hyper-parameters name runs on a CPU too (the workflow runs feature methods there)
    cpu = resolve_precision("fp16", CPU)
    assert cpu.half and not cpu.scaler and cpu.autocast is None and "note" not in cpu.describe()
    assert resolve_precision("amp", CPU).autocast == torch.float16 and resolve_precision("amp", CPU).scaler
    assert resolve_precision("bf16", CPU).autocast == torch.bfloat16
    auto = resolve_precision("auto", CPU)  # the clean preset on a CPU: fp32, by definition
    assert not auto.half and auto.autocast is None and auto.describe()["used"] == "fp32"


def test_pure_fp16_coop_mechanics_on_cpu(vit):
    """CoOp under `official` in pure fp16 (on the CPU, with its half kernels, as on a GPU):
    the CLIP copy, the context and SGD's momentum are half, no GradScaler, the shared fp32
    backbone is untouched, and one step is plain SGD on the half weights."""
    r = ref("coop")
    v = r["variants"]["rand16_end"]
    method, classes = _prompt_method(vit, "coop", r["class_names"])
    _load_official(method, v["params"])
    images, labels = r["images"], r["labels"]
    hp = method.hp
    assert hp["precision"] == "fp16"
    cfg = TrainConfig(epochs=1, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"],
                      precision=hp["precision"])
    seen = {}

    def hook(opt, args, kwargs):
        p = opt.param_groups[0]["params"][0]
        seen["momentum"] = opt.state[p]["momentum_buffer"].dtype
        seen["lr"] = opt.param_groups[0]["lr"]

    # the half model's own gradient at the start, for the expected SGD step

    twin, _ = _prompt_method(vit, "coop", r["class_names"])
    _load_official(twin, v["params"])
    twin.to_half()
    twin.train()
    loss = twin.loss((images.half(), labels), 0)
    assert loss.dtype == torch.float16 and abs(loss.item() - v["loss"]) < 0.02
    loss.backward()
    ctx0, g = twin.prompt.ctx.detach().clone(), twin.prompt.ctx.grad.clone()

    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(hook)
    try:
        stats = train(method, lambda e: [(images, labels)], cfg, CPU)
    finally:
        handle.remove()
    assert stats["precision"]["weights"] == "fp16" and stats["precision"]["grad_scaler"] is False
    assert method.prompt.ctx.dtype == torch.float16 and seen["momentum"] == torch.float16
    assert next(method.clip.parameters()).dtype == torch.float16 and method.prompt.model is method.clip
    assert next(vit.model.parameters()).dtype == torch.float32  # the shared backbone stays fp32
    # first SGD step (momentum buffer = gradient): ctx - lr (g + wd ctx), computed in half
    want = ctx0 - seen["lr"] * (g + hp["weight_decay"] * ctx0)
    close(method.prompt.ctx.detach().float(), want.float(), 2e-3)
    twin.eval()
    with torch.no_grad():
        logits = twin.logits(images.half(), classes)  # evaluated in half, as the official fp16 model
    assert logits.dtype == torch.float16
    close(logits.float(), v["logits"], 0.01, relative_to_max=True)  # fp16 round-off of the fp32 reference


def test_pure_fp16_tip_adapter_f_mechanics_on_cpu():
    """Tip-Adapter-F under `official` in pure fp16: half keys, half AdamW state (the second moment
    underflows where gradients are small), α and β as full-precision numbers, no GradScaler;
    the steps follow the official fp16 loop computed by hand."""
    seen = {}
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def hook(opt, args, kwargs):
        p = opt.param_groups[0]["params"][0]
        seen.setdefault("state", {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)})

    handle = register_optimizer_step_post_hook(hook)
    try:
        m, task, r, steps, lrs, stats = _train_tip_f(precision="fp16")
    finally:
        handle.remove()
    assert stats["precision"]["weights"] == "fp16" and stats["precision"]["grad_scaler"] is False
    assert m.keys.dtype == torch.float16 and m.values.dtype == torch.float16 and m.text.dtype == torch.float16
    assert m.alpha.dtype == torch.float64 and float(m.alpha) == 1.17
    assert seen["state"]["exp_avg"].dtype == seen["state"]["exp_avg_sq"].dtype == torch.float16
    # the official step 1 by hand, in half, from the same half keys
    _, task0, _ = _tip_task("tip_adapter_f")
    m0 = get_method("tip_adapter_f")(task0.hp)
    m0.setup(task0)
    w = torch.nn.Parameter(m0.keys.detach().half().clone())
    opt = torch.optim.AdamW([w], lr=r["config"]["lr"], eps=1e-4)
    x, y = next(iter(_f_batches(r)(0)))
    x = x.half()
    affinity = x @ w.t()
    cache = ((-1) * (1.0 - 1.0 * affinity)).exp() @ m0.values.half()
    logits = 100.0 * x @ m0.text.half().t() + cache * 1.17
    torch.nn.functional.cross_entropy(logits, y).backward()
    opt.step()
    assert opt.state[w]["exp_avg_sq"].dtype == torch.float16
    assert (opt.state[w]["exp_avg_sq"] == 0).logical_and(w.grad != 0).any()  # fp16 underflow of g²
    close(steps[0].float(), w.detach().float(), 1e-3)
    info = m.finish(task)
    logits = m.logits(task.test.features, task.classes)
    assert logits.dtype == torch.float16 and info["search_split"] == "full_val"


@pytest.mark.parametrize("name", ["coop", "cocoop", "vpt", "vlp", "dpt"])
def test_pure_fp16_every_prompt_method_on_cpu(vit, name):
    """One pure-fp16 epoch of each CoOp-family method (CPU half matmuls): every learned tensor
    (context, Meta-Net, visual prompts, CAVPT) is half, the method's CLIP is a half copy, the
    process's backbone stays fp32, and the half model evaluates half images."""
    r = ref("coop")
    names = r["class_names"]
    text = class_text_features(vit, names, "dataset", "a photo of a {}.")
    cls = get_method(name)
    over = {"epochs": 1, "warmup_epochs": 0, **({"text_warmup_epochs": 0} if name in ("vlp", "dpt") else {})}
    hp = resolve_hparams(cls, "oxford_pets", 16, "official", over)
    torch.manual_seed(0)
    method = cls(hp)
    task = SimpleNamespace(backbone=vit, classes=ClassSet(list(names), text, torch.arange(len(names))), device=CPU,
                           preset="official", hp=hp, dataset="oxford_pets", shots=16, seed=1, spec=None)
    method.setup(task)
    cfg = TrainConfig(epochs=1, lr=hp["lr"], precision=hp["precision"])
    stats = train(method, lambda e: [(r["images"], r["labels"])], cfg, CPU)
    assert stats["steps"] == 1 and math.isfinite(stats["final_loss"])
    assert stats["precision"]["weights"] == "fp16" and not stats["precision"]["grad_scaler"]
    assert {p.dtype for p in method.parameters()} == {torch.float16}
    assert next(method.clip.parameters()).dtype == torch.float16
    assert next(vit.model.parameters()).dtype == torch.float32
    method.eval()
    with torch.no_grad():
        logits = method.logits(r["images"].half(), task.classes)
    assert logits.dtype == torch.float16 and torch.isfinite(logits).all()


def test_half_method_is_evaluated_on_half_images(vit, monkeypatch):
    """The image path's evaluation (ImageInputs.logits) feeds a pure-fp16 method half images, no autocast."""
    from fewclip.data import transforms
    from fewclip.data.datasets import Item
    from fewclip.data.images import ImageItems
    from fewclip.engine.inputs import ImageInputs, ImageSet

    r = ref("coop")
    v = r["variants"]["rand16_end"]
    method, classes = _prompt_method(vit, "coop", r["class_names"])
    _load_official(method, v["params"])
    method.to_half()
    monkeypatch.setattr(ImageItems, "__getitem__", lambda self, i: (r["images"][i], 0))
    # the official images are model inputs already: collated as they are, not normalised again
    monkeypatch.setattr(transforms, "collate_normalized", torch.utils.data.default_collate)
    test = ImageSet(None, [Item(f"p{i}", 0, "c") for i in range(len(r["images"]))], 64)
    inputs = ImageInputs.__new__(ImageInputs)
    inputs.device = CPU
    logits = inputs.logits(method, test, classes, method.hp["precision"])
    assert logits.dtype == torch.float32  # returned as float, computed in half
    with torch.no_grad():
        want = method.logits(r["images"].half(), classes).float()
    close(logits, want, 0.0)
    close(logits, v["logits"], 0.01, relative_to_max=True)
