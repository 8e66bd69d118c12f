"""MaPLe and PromptSRC equal their official code (tests/data/official/README.md, sections maple.pt
and promptsrc.pt; the shared README-prompts2.md).

The official learnable tensors are loaded into fewclip's methods through the name maps below
(official name → fewclip state-dict key), the stored images go straight into the encoder, and every
output, loss term, gradient, lr, training trajectory and GPA aggregate the reference holds is
compared within 1e-5 (fp32): gradients and logits relative to their max (the text-context
gradients of this tiny model reach 12-25; logits are 100·cosine). The references prompt the first 2
layers of the tiny towers, as ViT-B/16's configs prompt the first 9 of 12 (`prompt_depth*` = 2).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fewclip.engine.run import train_config
from fewclip.engine.train import lr_at, train
from fewclip.errors import ConfigError
from fewclip.methods import ClassSet, get_method, resolve_hparams
from fewclip.methods.promptsrc import gpa_weights, templates
from fewclip.models import prompts
from fewclip.models.backbone import LOGIT_SCALE
from official_ref import backbone, close, ref

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-5
PL = "prompt_learner."
MAPLE = {PL + "ctx": "prompt.ctx", PL + "proj.weight": "proj.weight", PL + "proj.bias": "proj.bias",
         PL + "compound_prompts_text.0": "deep_text.0",
         PL + "compound_prompt_projections.0.weight": "deep_proj.0.weight",
         PL + "compound_prompt_projections.0.bias": "deep_proj.0.bias"}
PROMPTSRC = {PL + "ctx": "prompt.ctx", "image_encoder.VPT": "vpt.0",
             "image_encoder.transformer.resblocks.1.VPT_shallow": "vision_deep.0",
             "text_encoder.transformer.resblocks.1.VPT_shallow": "text_deep.0"}
NAMES = {"maple": MAPLE, "promptsrc": PROMPTSRC}


def hparams(name: str, r: dict) -> dict:
    """fewclip's settings for the reference's official cfg (maple.py / promptsrc.py document the mapping)."""
    if name == "maple":
        cfg = {k.removeprefix("TRAINER.MAPLE."): v for k, v in r["config"].items() if k.startswith("TRAINER.MAPLE.")}
        return {"n_ctx": cfg["N_CTX"], "ctx_init": cfg["CTX_INIT"], "prompt_depth": cfg["PROMPT_DEPTH"]}
    cfg = {k.removeprefix("TRAINER.PROMPTSRC."): v for k, v in r["config"].items()
           if k.startswith("TRAINER.PROMPTSRC.")}
    return {"n_ctx": cfg["N_CTX_TEXT"], "n_ctx_vision": cfg["N_CTX_VISION"], "ctx_init": cfg["CTX_INIT"],
            "prompt_depth_text": cfg["PROMPT_DEPTH_TEXT"], "prompt_depth_vision": cfg["PROMPT_DEPTH_VISION"],
            "text_loss_weight": float(cfg["TEXT_LOSS_WEIGHT"]), "image_loss_weight": float(cfg["IMAGE_LOSS_WEIGHT"]),
            "gpa_mean": float(cfg["GPA_MEAN"]), "gpa_std": float(cfg["GPA_STD"])}


def classes_of(names) -> ClassSet:
    """The engine's ClassSet (its hand-crafted features are not read by these two methods)."""
    return ClassSet(list(names), torch.zeros(len(names), 64), torch.arange(len(names)))


def build(name: str, load: bool = True, preset: str = "clean"):
    """The method set up by fewclip on the tiny reference CLIP (base-to-new settings), with the
    official tensors loaded."""
    r = ref(name)
    cls = get_method(name)
    hp = resolve_hparams(cls, "oxford_pets", 16, preset, hparams(name, r), "base2new")
    method = cls(hp)
    classes = classes_of(r["class_names"])
    method.setup(SimpleNamespace(backbone=backbone("vit"), device=torch.device("cpu"), classes=classes))
    if load:
        mapping = NAMES[name]
        assert set(r["params"]) == set(mapping)
        state = method.state_dict()
        state.update({mapping[k]: v for k, v in r["params"].items()})
        method.load_state_dict(state, strict=True)
    method.eval()
    return method, classes, r


def learned(method) -> dict:
    return {n: p for n, p in method.named_parameters() if p.requires_grad}


def loss_and_grads(method, images, labels, mapping) -> tuple[float, dict]:
    method.zero_grad(set_to_none=True)
    loss = method.loss((images, labels), 0)
    loss.backward()
    params = learned(method)
    return loss.item(), {official: params[ours].grad for official, ours in mapping.items()}


def check_grads(grads: dict, expected: dict) -> None:
    assert set(grads) == set(expected)
    for k, g in grads.items():
        assert g is not None, f"{k} got no gradient"
        close(g, expected[k], TOL, relative_to_max=True)


def simulate(method, r, epochs: int) -> tuple[list, list, dict]:
    """The official `train_sim`: fewclip's training loop (SGD, Dassl's warm-up + cosine) on one
    batch (the stored images) per epoch. Returns (lr per epoch, loss per epoch, {fewclip name:
    [tensor after each epoch]}), read inside the loop (after each epoch's step, before GPA)."""
    lrs, losses, after = [], [], {n: [] for n in learned(method)}
    loss = method.loss

    def recorded(batch, epoch):
        out = loss(batch, epoch)
        losses.append(out.item())
        return out

    method.loss = recorded
    hp = method.hp
    cfg = train_config(hp, {})

    def on_epoch_end(epoch):
        for n, p in learned(method).items():
            after[n].append(p.detach().clone())
        method.epoch_end(None, epoch)

    lrs = [lr_at(hp["lr"], e, 0, 1, cfg, hp["warmup_epochs"]) for e in range(epochs)]
    train(method, lambda epoch: [(r["images"], r["labels"])], cfg, torch.device("cpu"), on_epoch_end=on_epoch_end)
    del method.loss
    return lrs, losses, after


# ----------------------------------------------------------------------------- MaPLe


@pytest.fixture(scope="module")
def maple():
    return build("maple")


def test_maple_learns_exactly_the_official_tensors():
    method, _, r = build("maple", load=False)
    params = learned(method)
    assert {k: tuple(v.shape) for k, v in params.items()} == {
        MAPLE[k]: tuple(v.shape) for k, v in r["params"].items()}
    assert set(method.state_dict()) == set(MAPLE.values())  # nothing frozen is saved
    close(method.prompt.ctx, r["ctx_init_value"], 0)  # the first N_CTX 2 tokens of 'a photo of a'
    assert method.prompt.n_ctx == r["n_ctx"] == 2
    bank = method.prompt.bank(list(r["class_names"]))
    length = bank.tokens.shape[1]
    assert torch.equal(bank.tokens, r["tokenized_prompts"][:, :length])  # 'of a' stays in every prompt
    assert not r["tokenized_prompts"][:, length:].any()
    # the official init: the deep projections are copies of one initialised Linear
    two, _, _ = build_deeper("maple", 3)
    assert torch.equal(two.deep_proj[0].weight, two.deep_proj[1].weight)


def build_deeper(name, depth):
    """The method at a larger depth on the reference model (3 of the tiny ViT's 3 vision layers)."""
    r = ref(name)
    cls = get_method(name)
    hp = resolve_hparams(cls, "oxford_pets", 16, "clean", {**hparams(name, r), "prompt_depth": depth}, "base2new")
    method = cls(hp)
    classes = classes_of(r["class_names"])
    info = method.setup(SimpleNamespace(backbone=backbone("vit"), device=torch.device("cpu"), classes=classes))
    return method, classes, info


def test_maple_prompts_features_logits_loss_and_gradients(maple):
    method, classes, r = maple
    images, labels = r["images"], r["labels"]
    with torch.no_grad():
        shallow, deep = method.vision_prompts()
        close(shallow, r["shared_ctx"], TOL)
        close(torch.stack(deep), r["visual_deep_prompts"], TOL)
        close(method.text_features(classes, normalize=False), r["text_features_raw"], TOL)
        close(method.text_features(classes), r["text_features"], TOL)
        close(method.prompted_image_features(images, normalize=False), r["image_features_raw"], TOL)
        close(method.prompted_image_features(images), r["image_features"], TOL)
        close(method.logits(images, classes), r["logits"], TOL, relative_to_max=True)
    loss, grads = loss_and_grads(method, images, labels, MAPLE)
    assert abs(loss - r["loss"]) <= TOL
    check_grads(grads, r["grads"])


def test_maple_base_to_new_logits(maple):
    method, _, r = maple
    new = classes_of(r["new"]["class_names"])
    with torch.no_grad():
        close(method.text_features(new, normalize=False), r["new"]["text_features_raw"], TOL)
        close(method.logits(r["images"], new), r["new"]["logits"], TOL, relative_to_max=True)


def test_maple_schedule_and_training_trajectory():
    method, _, r = build("maple")
    sim = r["train_sim"]
    assert (method.hp["lr"], method.hp["epochs"], method.hp["warmup_epochs"]) == (
        sim["optim"]["LR"], sim["optim"]["MAX_EPOCH"], sim["optim"]["WARMUP_EPOCH"])
    assert (method.hp["momentum"], method.hp["weight_decay"], method.hp["warmup_lr"]) == (
        sim["sgd"]["momentum"], sim["sgd"]["weight_decay"], sim["optim"]["WARMUP_CONS_LR"])
    lrs, losses, after = simulate(method, r, sim["optim"]["MAX_EPOCH"])
    close(lrs, sim["lr_per_epoch"], 1e-12, relative_to_max=True)
    close(losses, sim["loss_per_epoch"], TOL, relative_to_max=True)
    for official, ours in MAPLE.items():
        close(torch.stack(after[ours]), sim["params_after_epoch"][official], TOL, relative_to_max=True)


# ----------------------------------------------------------------------------- PromptSRC


@pytest.fixture(scope="module")
def promptsrc():
    return build("promptsrc")


def test_promptsrc_learns_exactly_the_official_tensors():
    method, _, r = build("promptsrc", load=False)
    assert {k: tuple(v.shape) for k, v in learned(method).items()} == {
        PROMPTSRC[k]: tuple(v.shape) for k, v in r["params"].items()}
    close(method.prompt.ctx, r["ctx_init_value"], 0)  # the 4 tokens of 'a photo of a'
    bank = method.prompt.bank(list(r["class_names"]))
    assert torch.equal(bank.tokens, r["tokenized_prompts"][:, : bank.tokens.shape[1]])


def test_promptsrc_frozen_targets_are_the_60_templates_mean(promptsrc):
    method, _, r = promptsrc
    assert templates() == list(r["templates"])  # open_clip's first 60 of CLIP's 80, 'a photo of a {}.' first
    close(method.teacher[0], r["fixed_embeddings_raw"], TOL)


def test_promptsrc_features_logits_each_loss_term_and_gradients(promptsrc):
    method, classes, r = promptsrc
    images, labels = r["images"], r["labels"]
    with torch.no_grad():
        close(method.text_features(classes, normalize=False), r["text_features_raw"], TOL)
        close(method.text_features(classes), r["text_features"], TOL)
        close(method.prompted_image_features(images, normalize=False), r["image_features_raw"], TOL)
        close(method.prompted_image_features(images), r["image_features"], TOL)
        close(method.logits(images, classes), r["logits"], TOL, relative_to_max=True)
        zs = method.image_features(images)  # the frozen (zero-shot) encoder
        close(zs, r["zs_image_features"], TOL)
        fixed = torch.nn.functional.normalize(method.teacher[0], dim=-1)
        close(fixed, r["fixed_embeddings"], TOL)
        close(LOGIT_SCALE * zs @ fixed.t(), r["zs_logits"], TOL, relative_to_max=True)
    method.train_classes = classes
    terms = method.loss_terms(images, labels)
    for ours, official in (("ce", "loss_ce"), ("scl_text", "loss_scl_text"), ("scl_image", "loss_scl_image"),
                           ("scl_logits", "loss_scl_logits")):
        assert abs(terms[ours].item() - r[official]) <= TOL, ours
    loss, grads = loss_and_grads(method, images, labels, PROMPTSRC)
    assert abs(loss - r["loss"]) <= TOL
    check_grads(grads, r["grads"])


# which (protocol, dataset) of fewclip's settings each stored GPA config is
GPA_CELLS = {"base2new": ("base2new", "oxford_pets"), "cross_datasets": ("dg", "imagenet"),
             "few_shot": ("fewshot", "oxford_pets"), "few_shot_alt_45_5": ("fewshot", "dtd")}


@pytest.mark.parametrize("config", sorted(GPA_CELLS))
def test_promptsrc_gpa_weights_of_every_shipped_config(config):
    g = ref("promptsrc")["gpa_weights"][config]
    close(torch.tensor(gpa_weights(g["max_epoch"], g["mean"], g["std"]), dtype=torch.float64), g["weights"],
          1e-14, relative_to_max=True)
    protocol, dataset = GPA_CELLS[config]
    for preset in ("clean", "official"):
        hp = resolve_hparams(get_method("promptsrc"), dataset, 16, preset, None, protocol)
        assert (hp["epochs"], hp["gpa_mean"], hp["gpa_std"]) == (g["max_epoch"], g["mean"], g["std"])


def test_promptsrc_aggregate_of_the_stored_trajectory(promptsrc):
    """epoch_end after each stored epoch, then finish: the aggregate, its logits on the base and the
    new names (the official GPA model also carries the round-off of its frozen weights, 2.4e-7)."""
    _, _, r = promptsrc
    method, classes, _ = build("promptsrc")
    sim = r["train_sim"]
    epochs = sim["optim"]["MAX_EPOCH"]
    assert method.weights == gpa_weights(epochs, 15.0, 1.0)
    params = learned(method)
    for e in range(epochs):
        with torch.no_grad():
            for official, ours in PROMPTSRC.items():
                params[ours].copy_(sim["params_after_epoch"][official][e])
        method.epoch_end(None, e)
    info = method.finish(None)
    assert len(info["gpa_weights"]) == epochs
    for official, ours in PROMPTSRC.items():
        close(params[ours], sim["gpa_params"][official], 1e-7)
    assert set(method.state_dict()) == set(PROMPTSRC.values())  # the running sum is not saved
    with torch.no_grad():
        close(method.logits(r["images"], classes), sim["gpa_logits"], TOL, relative_to_max=True)
        new = classes_of(r["new"]["class_names"])
        assert r["new"]["params_source"] == "train_sim.gpa_params"
        close(method.text_features(new, normalize=False), r["new"]["text_features_raw"], TOL)
        close(method.logits(r["images"], new), r["new"]["logits"], TOL, relative_to_max=True)


def test_promptsrc_schedule_training_trajectory_and_gpa():
    method, _, r = build("promptsrc")
    sim = r["train_sim"]
    epochs = sim["optim"]["MAX_EPOCH"]
    assert (method.hp["lr"], method.hp["epochs"], method.hp["warmup_epochs"]) == (
        sim["optim"]["LR"], epochs, sim["optim"]["WARMUP_EPOCH"])
    method.train_classes = classes_of(r["class_names"])
    lrs, losses, after = simulate(method, r, epochs)
    close(lrs, sim["lr_per_epoch"], 1e-12, relative_to_max=True)
    close(losses, sim["loss_per_epoch"], TOL, relative_to_max=True)
    for official, ours in PROMPTSRC.items():
        close(torch.stack(after[ours]), sim["params_after_epoch"][official], TOL, relative_to_max=True)
    method.finish(None)
    for official, ours in PROMPTSRC.items():
        close(learned(method)[ours], sim["gpa_params"][official], TOL, relative_to_max=True)


# ----------------------------------------------------------------------------- shared machinery


@pytest.mark.parametrize("name", ["maple", "promptsrc"])
def test_waste_free_text_path_equals_the_full_sequence(name, monkeypatch):
    """Deep text prompts replace positions before every EOT: the prefix-sharing causal encoder gives
    open_clip's full-sequence output (every prompt padded, blocks one by one), gradients included."""
    method, classes, r = build(name)
    names = list(r["class_names"]) + list(r["new"]["class_names"])
    both = classes_of(names)

    def features_and_grads():
        method.zero_grad(set_to_none=True)
        feats = method.text_features(both, normalize=False)
        (feats * torch.linspace(-1, 1, feats.numel()).reshape(feats.shape)).sum().backward()
        return feats.detach(), {n: p.grad.clone() for n, p in learned(method).items() if p.grad is not None}

    method.train()
    fast, fast_grads = features_and_grads()
    monkeypatch.setattr(prompts, "FAST_TEXT", False)
    full, full_grads = features_and_grads()
    close(fast, full, 1e-5)
    assert set(fast_grads) == set(full_grads) and fast_grads
    for n in fast_grads:
        close(fast_grads[n], full_grads[n], 1e-5, relative_to_max=True)


def test_depth_beyond_the_towers_prompts_every_layer():
    """The official code builds prompts for layers a tower does not have and never uses them;
    fewclip builds those it uses (tiny reference: 2 text, 3 vision layers)."""
    method, _, info = build_deeper("maple", 9)
    assert len(method.deep_text) == 2 and info["prompt_depth_used"] == {"text": 2, "vision": 3}
    assert len(method.text_layer_prompts()) == 2 and len(method.vision_prompts()[1]) == 2
    r = ref("promptsrc")
    cls = get_method("promptsrc")
    hp = resolve_hparams(cls, "oxford_pets", 16, "clean", {"prompt_depth_vision": 0}, "base2new")
    src = cls(hp)
    info = src.setup(SimpleNamespace(backbone=backbone("vit"), device=torch.device("cpu"),
                                     classes=classes_of(r["class_names"])))
    assert info["prompt_depth_used"] == {"text": 2, "vision": 0} and not len(src.vpt) and not len(src.vision_deep)
    with torch.no_grad():  # no vision prompts: the frozen encoder's features
        close(src.prompted_image_features(r["images"]), src.image_features(r["images"]), 1e-6)


@pytest.mark.parametrize("name", ["maple", "promptsrc"])
def test_official_precision_is_the_official_fp16_split(name):
    """`official`: pure fp16 as PREC fp16 (half CLIP copy and context; MaPLe's proj half), the
    deep prompts (and MaPLe's projections) kept in fp32 as the official code creates them; one SGD
    step runs on the CPU and the half logits stay near the fp32 ones."""
    method, classes, r = build(name, preset="official")
    assert method.hp["precision"] == "fp16"
    with torch.no_grad():
        want = method.logits(r["images"], classes)
    method.to_half()
    assert method.prompt.ctx.dtype == torch.float16 and next(method.clip.parameters()).dtype == torch.float16
    for p in method.official_fp32():
        assert p.dtype == torch.float32
    if name == "maple":
        assert method.proj.weight.dtype == torch.float16 and len(method.official_fp32()) == 3
    else:
        assert [t.dtype for t in method.gpa.sums()] == [p.dtype for p in learned(method).values()]
    method.train_classes = classes
    cfg = train_config({**method.hp, "epochs": 1}, {})
    stats = train(method, lambda epoch: [(r["images"], r["labels"])], cfg, torch.device("cpu"),
                  on_epoch_end=lambda e: method.epoch_end(None, e))
    assert stats["precision"]["weights"] == "fp16" and stats["steps"] == 1
    with torch.no_grad():
        got = method.logits(r["images"].half(), classes).float()
    assert torch.isfinite(got).all()
    close(got, want, 0.05, relative_to_max=True)


@pytest.mark.parametrize("name,bad,key", [
    ("maple", {"prompt_depth": 0}, "prompt_depth=0"),
    ("maple", {"n_ctx": 5}, "n_ctx=5 with ctx_init"),
    ("promptsrc", {"gpa_std": 0.0}, "gpa_std=0.0"),
    ("promptsrc", {"prompt_depth_text": 0}, "prompt_depth_text=0"),
    ("promptsrc", {"gpa_mean": 1000.0, "gpa_std": 1.0}, "every one of the 20 epochs gets weight 0"),
])
def test_bad_values_are_refused_before_any_work(name, bad, key, tmp_path, cli):
    with pytest.raises(ConfigError, match=key):
        resolve_hparams(get_method(name), "oxford_pets", 16, "clean", bad, "base2new")
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "data_root": str(tmp_path / "no-data"), "seeds": [1], "method_params": {name: bad},
        "backbones": {"tiny": {"model": "fewclip-tiny-vit", "pretrained": "none"}},
        "protocols": {"base2new": {"datasets": ["eurosat"], "shots": 16,
                                   "runs": [{"backbone": "tiny", "methods": [name]}]}}}))
    proc = cli("plan", "--configfile", cfg)
    assert proc.returncode != 0 and key in proc.stderr and "Traceback" not in proc.stderr


class Killed(Exception):
    """Stands for the process dying between an epoch's end and its checkpoint."""


def test_promptsrc_killed_run_resumes_to_the_same_aggregate(tmp_path, monkeypatch):
    """The official GPA sum and step counter live outside the checkpoint, so a resumed official run
    never loads its aggregate; fewclip's sum is a buffer of the training state: a run killed in its
    second epoch resumes to the uninterrupted run's aggregate and predictions."""
    import warnings

    from fewclip.data.fixtures import write_fixture
    from fewclip.engine.run import RunSpec, run_cell

    root = tmp_path / "data"
    write_fixture("oxford_pets", root, n_classes=3, n_train=4, n_val=2, n_test=2)

    def run(out):
        spec = RunSpec(data_root=str(root), dataset="oxford_pets", method="promptsrc", backbone="fewclip-tiny-vit",
                       pretrained="none", out=str(tmp_path / out), shots=2, seed=1, features=str(tmp_path / "f"),
                       overrides={"epochs": 3, "batch_size": 2, "gpa_mean": 2.0, "gpa_std": 1.0})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return run_cell(spec)

    reference = run("uninterrupted")
    cls = get_method("promptsrc")
    original = cls.epoch_end

    def die(self, task, epoch):
        if epoch == 1:
            raise Killed
        original(self, task, epoch)

    monkeypatch.setattr(cls, "epoch_end", die)
    with pytest.raises(Killed):
        run("resumed")
    state = torch.load(tmp_path / "resumed" / "train_state.pt", weights_only=True)
    assert state["epoch"] == 0 and any(k.startswith("gpa.") for k in state["method"])  # epoch 1's share is saved
    monkeypatch.setattr(cls, "epoch_end", original)
    resumed = run("resumed")
    assert resumed["train"]["resumed_from"] == 1 and resumed["top1"] == reference["top1"]
    assert resumed["selected"]["gpa_weights"] == reference["selected"]["gpa_weights"]
    got = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["state"]
    want = torch.load(tmp_path / "uninterrupted" / "checkpoint.pt", weights_only=True)["state"]
    assert set(got) == set(want) == set(PROMPTSRC.values())  # the learned tensors only, no running sum
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=0)
