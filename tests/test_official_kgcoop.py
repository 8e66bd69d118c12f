"""KgCoOp equals the official htyao89/KgCoOp code (tests/data/official/README.md, section kgcoop.pt).

The reference ran the official trainer (vit_b16_ep100_ctxv1 + base2new_train.sh's options, W 8.0)
in fp32 on the tiny CLIP. fewclip's method is set up on the same CLIP with the engine's hand-crafted
class features, the stored context `prompt_learner.ctx` is loaded into `prompt.ctx`, and every stored
tensor, loss term, gradient and the lr schedule are compared within 1e-5: logits (100 × a cosine)
and the context gradient (max|g| ≈ 16) relative to their max, the rest absolutely.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from fewclip.data.datasets import DATASETS
from fewclip.engine.train import TrainConfig, lr_at, train
from fewclip.errors import ConfigError
from fewclip.methods import ClassSet, get_method, resolve_hparams
from fewclip.models.prompts import encode_prompts
from fewclip.models.templates import class_text_features
from official_ref import backbone, close, ref

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = 1e-5
CPU = torch.device("cpu")
# KgCoOp's CUSTOM_TEMPLATES keys (cfg.DATASET.NAME) -> fewclip's dataset names
OFFICIAL_NAMES = {
    "OxfordPets": "oxford_pets", "OxfordFlowers": "oxford_flowers", "FGVCAircraft": "fgvc_aircraft",
    "DescribableTextures": "dtd", "EuroSAT": "eurosat", "StanfordCars": "stanford_cars", "Food101": "food101",
    "SUN397": "sun397", "Caltech101": "caltech101", "UCF101": "ucf101", "ImageNet": "imagenet",
    "ImageNetSketch": "imagenet_sketch", "ImageNetV2": "imagenet_v2", "ImageNetA": "imagenet_a",
    "ImageNetR": "imagenet_r",
}


@pytest.fixture(scope="module")
def vit():
    return backbone("vit")


@pytest.fixture(scope="module")
def r():
    return ref("kgcoop")


def official_hparams(r: dict, preset: str = "clean", **over) -> dict:
    """fewclip's resolved settings for the reference's base-to-new cell (its cfg: fp32, W 8.0)."""
    return resolve_hparams(get_method("kgcoop"), "oxford_pets", 16, preset, over or None, "base2new")


def build(vit, names, hp, dataset="oxford_pets", template="a photo of a {}, a type of pet."):
    """The method set up on `names` as the engine does it (ClassSet of the dataset's template)."""
    text = class_text_features(vit, list(names), "dataset", template)
    classes = ClassSet(list(names), text, torch.arange(len(names)), template)
    method = get_method("kgcoop")(hp)
    method.setup(SimpleNamespace(backbone=vit, device=CPU, classes=classes, dataset=dataset))
    return method, classes


@pytest.fixture(scope="module")
def trained(vit, r):
    """The base-class model holding the official context."""
    method, classes = build(vit, r["class_names"], official_hparams(r))
    with torch.no_grad():
        close(method.prompt.ctx, r["ctx_init_value"], 0.0)  # the official init, before the stored values
    method.load_state_dict({"prompt.ctx": r["params"]["prompt_learner.ctx"]}, strict=True)
    method.eval()
    return method, classes


def test_settings_are_the_official_config(r):
    cfg = r["config"]
    hp = official_hparams(r, "official")
    assert hp["kg_weight"] == cfg["TRAINER.COOP.W"] == r["w"] == 8.0
    assert (hp["lr"], hp["epochs"], hp["batch_size"]) == (cfg["OPTIM.LR"], cfg["OPTIM.MAX_EPOCH"],
                                                          cfg["DATALOADER.TRAIN_X.BATCH_SIZE"])
    # CTX_INIT True: the hard-coded 'a photo of a' whatever N_CTX says; one shared context at the end
    assert cfg["TRAINER.COOP.CTX_INIT"] == 1 and (hp["ctx_init"], hp["csc"]) == ("a photo of a", False)
    assert hp["class_token_position"] == cfg["TRAINER.COOP.CLASS_TOKEN_POSITION"] == "end"
    o, sgd = r["schedule"]["optim"], r["schedule"]["sgd"]
    assert (hp["optimizer"], hp["schedule"], hp["warmup_epochs"], hp["warmup_lr"]) == (
        o["NAME"], "cosine_epoch", o["WARMUP_EPOCH"], o["WARMUP_CONS_LR"])
    assert (o["LR_SCHEDULER"], o["WARMUP_TYPE"], o["WARMUP_RECOUNT"]) == ("cosine", "constant", 1)
    assert (hp["momentum"], hp["weight_decay"], sgd["dampening"], sgd["nesterov"]) == (
        sgd["momentum"], sgd["weight_decay"], 0, 0)
    # PREC fp16 (train.py's default, no script overrides it): pure half; clean: fp32 master weights
    assert hp["precision"] == "fp16" and official_hparams(r)["precision"] == "auto"
    # one config for every protocol the repository ships: no ImageNet or few-shot special case
    cls = get_method("kgcoop")
    for protocol, dataset, shots in [("base2new", "imagenet", 16), ("fewshot", "dtd", 4), ("dg", "imagenet", 16)]:
        other = resolve_hparams(cls, dataset, shots, "official", None, protocol)
        assert other == hp, (protocol, dataset)


def test_kgcoops_template_table(vit, r):
    """KgCoOp's CUSTOM_TEMPLATES: each dataset's fewclip (CoOp) template, except DTD's."""
    assert set(OFFICIAL_NAMES) == set(r["templates"])
    for official, name in OFFICIAL_NAMES.items():
        method, _ = build(vit, ["cat"], official_hparams(r), dataset=name, template=DATASETS[name].template)
        assert method.kg_template == r["templates"][official], name
    assert DATASETS["dtd"].template == "{} texture." != r["templates"]["DescribableTextures"]


def test_prompts_and_hand_crafted_targets(trained, r):
    method, classes = trained
    assert method.prompt.n_ctx == r["n_ctx"] == 4
    bank = method.prompt.bank(classes.names)
    assert bank.name_lens == list(r["name_lens"])
    L = bank.tokens.shape[1]
    assert torch.equal(bank.tokens, r["tokenized_prompts"][:, :L]) and not r["tokenized_prompts"][:, L:].any()
    assert method.kg_template == r["template"]
    assert [method.kg_template.format(n.replace("_", " ")) for n in classes.names] == list(r["hand_prompts"])
    close(method.targets, r["hand_text_features"], TOL)


def test_features_logits_loss_terms_and_gradient(trained, r):
    method, classes = trained
    images, labels = r["images"], r["labels"]
    with torch.no_grad():
        bank = method.prompt.bank(classes.names)
        close(encode_prompts(method.prompt, bank, normalize=False), r["text_features_raw"], TOL)
        close(method.learned_text_features(classes), r["text_features"], TOL)
        close(method.clip.encode_image(images), r["image_features_raw"], TOL)
        close(method.image_features(images), r["image_features"], TOL)
        close(method.logits(images, classes), r["logits"], TOL, relative_to_max=True)
    method.train()
    method.zero_grad(set_to_none=True)
    t = method.terms(images, labels)
    close(t["logits"].detach(), r["logits"], TOL, relative_to_max=True)  # train and eval forwards agree
    close(t["cos"].detach(), r["cos_per_class"], TOL)
    for ours, theirs in [("score", "score"), ("ce", "loss_ce"), ("kg", "loss_kg"), ("loss", "loss")]:
        assert abs(t[ours].item() - r[theirs]) <= TOL, (ours, t[ours].item(), r[theirs])
    assert method.loss((images, labels), epoch=1).item() == pytest.approx(t["loss"].item(), abs=0)
    t["loss"].backward()
    method.eval()
    close(method.prompt.ctx.grad, r["grads"]["prompt_learner.ctx"], TOL, relative_to_max=True)
    learned = {n: p.numel() for n, p in method.named_parameters() if p.requires_grad}
    assert learned == {"prompt.ctx": r["params"]["prompt_learner.ctx"].numel()}
    assert set(method.state_dict()) == {"prompt.ctx"}  # the targets are recomputed, never checkpointed


def test_base_to_new_scores_the_new_names_with_the_learned_context(vit, trained, r):
    """As the official checkpoint path: the base model's context on a model built on the new names."""
    base, _ = trained
    new = r["new"]
    method, classes = build(vit, new["class_names"], official_hparams(r))
    method.load_state_dict(base.state_dict(), strict=True)
    method.eval()
    images = r["images"]
    bank = method.prompt.bank(classes.names)
    assert bank.name_lens == list(new["name_lens"])
    L = bank.tokens.shape[1]
    assert torch.equal(bank.tokens, new["tokenized_prompts"][:, :L]) and not new["tokenized_prompts"][:, L:].any()
    with torch.no_grad():
        close(encode_prompts(method.prompt, bank, normalize=False), new["text_features_raw"], TOL)
        close(method.learned_text_features(classes), new["text_features"], TOL)
        close(method.targets, new["hand_text_features"], TOL)
        close(method.terms(images, r["labels"] % len(classes.names))["score"], new["score"], TOL)
        close(method.logits(images, classes), new["logits"], TOL, relative_to_max=True)
        # the engine's path: the trained (base) model scores the new ClassSet, unseen in training
        unseen = ClassSet(classes.names, classes.text_features, None, classes.template)
        close(base.logits(images, unseen), new["logits"], TOL, relative_to_max=True)


def test_lr_schedule_is_the_current_codes(r):
    """One Dassl scheduler, as kgcoop.py since 98d11b8; the double-stepped schedule of the earlier
    code (lr never above 1e-5) is the stored `buggy_lr_per_epoch`, which fewclip does not follow."""
    s = r["schedule"]
    hp = official_hparams(r, "official")
    cfg = TrainConfig(epochs=hp["epochs"], lr=hp["lr"], warmup_epochs=hp["warmup_epochs"], warmup_lr=hp["warmup_lr"],
                      schedule=hp["schedule"])
    got = torch.tensor([lr_at(hp["lr"], e, 0, 1, cfg, hp["warmup_epochs"]) for e in range(hp["epochs"])],
                       dtype=torch.float64)
    want = torch.tensor(s["lr_per_epoch"], dtype=torch.float64)
    close(got, want, 1e-12)
    close(got[1:], torch.tensor(s["lr_printed_per_epoch"][:-1], dtype=torch.float64), 1e-12)  # printed = shifted
    buggy = torch.tensor(s["buggy_lr_per_epoch"], dtype=torch.float64)
    e = torch.arange(1, hp["epochs"], dtype=torch.float64)
    close(buggy[1:], 1e-5 * ((1 + torch.cos(math.pi * (e - 1) / hp["epochs"])) / 2) ** 2, 1e-15)
    assert buggy.max() <= 1e-5 and (got[1:] > buggy[1:]).all() and got.max() == 0.002


def test_weight_zero_is_coop(vit, r):
    """W = 0 leaves CoOp's loss (the same context, words and classes)."""
    kg, classes = build(vit, r["class_names"], official_hparams(r, kg_weight=0.0))
    coop = get_method("coop")(resolve_hparams(get_method("coop"), "oxford_pets", 16, "clean",
                                              {"ctx_init": "a photo of a"}, "base2new"))
    coop.setup(SimpleNamespace(backbone=vit, device=CPU, classes=classes, dataset="oxford_pets"))
    ctx = {"prompt.ctx": r["params"]["prompt_learner.ctx"]}
    kg.load_state_dict(ctx)
    coop.load_state_dict(ctx)
    with torch.no_grad():
        batch = (r["images"], r["labels"])
        close(kg.loss(batch, 1), coop.loss(batch, 1), 1e-6)


def test_bad_weight_is_refused_before_any_work(cli, tmp_path):
    with pytest.raises(ConfigError, match=r"kg_weight=-1.0 \(must be 0 or more\)"):
        resolve_hparams(get_method("kgcoop"), "dtd", 4, "clean", {"kg_weight": -1.0})
    out = tmp_path / "run"
    proc = cli("run", "--data-root", tmp_path / "no-data", "--dataset", "dtd", "--method", "kgcoop", "--shots", 4,
               "--seed", 1, "--backbone", "fewclip-tiny-vit", "--pretrained", "none", "--out", out,
               "--set", "kg_weight=-1")
    from conftest import refused

    refused(proc, "kg_weight=-1.0", "0 or more")
    assert not out.exists()


def test_pure_fp16_step_on_cpu_with_half_targets(vit, r):
    """The official precision: a half CLIP copy encodes the targets (the official fp16 second CLIP),
    context and targets are half, one SGD step is finite; the process's backbone stays fp32."""
    hp = official_hparams(r, "official", epochs=1, warmup_epochs=0)
    method, classes = build(vit, r["class_names"], hp)
    fp32_targets = method.targets.clone()
    stats = train(method, lambda e: [(r["images"], r["labels"])],
                  TrainConfig(epochs=1, lr=hp["lr"], precision=hp["precision"]), CPU)
    assert stats["precision"]["weights"] == "fp16" and math.isfinite(stats["final_loss"])
    assert method.prompt.ctx.dtype == torch.float16 and next(method.clip.parameters()).dtype == torch.float16
    assert next(vit.model.parameters()).dtype == torch.float32
    assert not torch.equal(method.targets, fp32_targets)  # re-encoded by the half copy...
    close(method.targets, fp32_targets, 5e-3)  # ...to fp16 precision
    with torch.no_grad():
        logits = method.logits(r["images"].half(), classes)
    assert logits.dtype == torch.float16 and torch.isfinite(logits).all()
