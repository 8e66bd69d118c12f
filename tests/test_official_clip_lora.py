"""CLIP-LoRA equals the official MaxZanella/CLIP-LoRA code (tests/data/official/README.md, section
clip_lora.pt).

The reference ran the official `apply_lora` + `run_lora` in fp32 on the tiny CLIP (its autocast and
GradScaler switch themselves off without CUDA). fewclip's method is set up on the same CLIP, the
stored LoRA tensors are loaded through the name map below, the stored images go straight into the
encoders, and every stored feature, logit, loss, gradient, AdamW state and learning rate is compared
within 1e-5: logits (100 × a cosine) and gradients relative to their max, the rest absolutely. The
recorded run (dropout 0, 1000 steps = 500 × K with K = 2) goes through the engine's own training loop.
"""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from fewclip.engine.run import train_config
from fewclip.engine.train import TrainConfig, lr_at, train
from fewclip.errors import ConfigError
from fewclip.methods import ClassSet, Method, get_method, resolve_hparams
from fewclip.models.templates import class_text_features
from official_ref import backbone, close, ref

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = 1e-5
CPU = torch.device("cpu")
OFFICIAL_NAME = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.([qkv])_proj\.(w_lora_[AB]|dropout)$")


def ours(official: str) -> str:
    """fewclip's name of an official LoRA tensor or module (relative to the CLIP model after apply_lora)."""
    visual, block, proj, leaf = OFFICIAL_NAME.match(official).groups()
    tail = {"w_lora_A": ".lora_A", "w_lora_B": ".lora_B", "dropout": ""}[leaf]
    return f"{'visual' if visual else 'text'}.{block}.{proj}{tail}"


@pytest.fixture(scope="module")
def vit():
    return backbone("vit")


@pytest.fixture(scope="module")
def r():
    return ref("clip_lora")


def hparams(preset: str = "official", **over) -> dict:
    """fewclip's settings for the reference's cell (`--dataset dtd --shots 2`), in fp32 as it ran."""
    return resolve_hparams(get_method("clip_lora"), "dtd", 2, preset, {"precision": "fp32", **over})


def build(vit, r, hp=None, load=True, template="{} texture."):
    """The method set up as the engine does it (a ClassSet of the dataset's own template, which the
    official preset ignores), with the stored LoRA tensors loaded."""
    names = list(r["class_names"])
    classes = ClassSet(names, class_text_features(vit, names, "dataset", template), torch.arange(len(names)),
                       template)
    method = get_method("clip_lora")(hp or hparams())
    method.setup(SimpleNamespace(backbone=vit, device=CPU, classes=classes, preset=method.hp.get("preset", "clean")))
    if load:
        method.load_state_dict({ours(k): v for k, v in r["params"].items()}, strict=True)
    return method, classes


def grads_of(method) -> dict:
    params = dict(method.named_parameters())
    return {k: params[ours(k)].grad for k in ref("clip_lora")["params"]}


def check_grads(grads: dict, expected: dict) -> None:
    assert set(grads) == set(expected)
    for k, g in grads.items():
        assert g is not None, k
        close(g, expected[k], TOL, relative_to_max=True)


class Replay(torch.nn.Module):
    """A stored keep-mask in place of a LoRA dropout: x * mask / (1 - p), in fewclip's batch-first layout."""

    def __init__(self, name: str, mask: torch.Tensor, p: float, calls: list):
        super().__init__()
        self.name, self.mask, self.p, self.calls = name, mask.transpose(0, 1), p, calls

    def forward(self, x):
        self.calls.append(self.name)
        return x * (self.mask[:, : x.shape[1]].to(x.dtype) / (1 - self.p))


# ----------------------------------------------------------------------------- structure


def test_lora_tensors_are_the_official_ones(vit, r):
    """q, k, v of every block of both towers (tiny CLIP: 2 text + 3 vision blocks), rank 2, scaling
    α/√r; the method's state holds exactly the 30 official tensors (6,144 parameters)."""
    method, _ = build(vit, r, load=False)
    state = method.state_dict()
    assert set(state) == {ours(k) for k in r["params"]}
    assert all(state[ours(k)].shape == v.shape for k, v in r["params"].items())
    assert sum(p.numel() for p in method.parameters() if p.requires_grad) == 6144
    loras = {f"{t}.{i}.{p}" for t in ("text", "visual") for i, _ in enumerate(getattr(method, t)) for p in "qkv"}
    assert loras == {ours(n + ".dropout") for n in r["lora_module_names"]}
    assert all(m.scaling == pytest.approx(r["scaling"], abs=1e-15) for m in method.modules() if hasattr(m, "scaling"))
    assert r["args"]["r"] == method.hp["rank"] and r["args"]["alpha"] == method.hp["alpha"]
    assert r["args"]["dropout_rate"] == method.hp["dropout"] and r["logit_scale"] == 100
    # the official init: A ~ U(±1/sqrt(in)), B = 0 -> the untrained method is zero-shot CLIP
    for m in method.modules():
        if hasattr(m, "lora_A"):
            assert m.lora_A.abs().max() <= 1 / math.sqrt(m.lora_A.shape[1]) and not m.lora_B.any()


def test_untrained_lora_is_zero_shot_clip(vit, r):
    """B = 0: plain CLIP's features and logits, and run_lora's zero-shot check on the test images,
    under the official single template."""
    method, classes = build(vit, r, load=False)
    method.eval()
    with torch.no_grad():
        close(F.normalize(method.text_features(classes), dim=-1), r["nolora"]["text_features"], TOL)
        close(F.normalize(method.image_features(r["images"]), dim=-1), r["nolora"]["image_features"], TOL)
        close(method.logits(r["images"], classes), r["nolora"]["logits"], TOL, relative_to_max=True)
        close(method.logits(r["test_images"], classes), r["run"]["zs_test_logits"], TOL, relative_to_max=True)
    tokens = vit.tokenizer(list(r["texts"]))
    assert torch.equal(tokens, r["tokens"])  # 'a photo of a {}.' with '_' -> ' ', as run_lora builds them


# ----------------------------------------------------------------------------- forward, loss, gradients


def test_merged_eval_features_logits_and_loss(vit, r):
    """Eval mode: the merged weights W + s·B A, no dropout, no gradient to A and B."""
    method, classes = build(vit, r)
    method.eval()
    e = r["eval"]
    w = method.clip.transformer.resblocks[0].attn.in_proj_weight[:64]
    close(method.text[0].q.merged(w), e["text0_q_proj_weight_merged"], 1e-6)
    text = method.text_features(classes)
    close(text, e["text_features_raw"], TOL)
    close(method.image_features(r["images"]), e["image_features_raw"], TOL)
    logits = method.logits(r["images"], classes)
    close(logits, e["logits"], TOL, relative_to_max=True)
    loss = F.cross_entropy(logits, r["labels"])
    assert abs(loss.item() - e["loss"]) <= TOL
    assert loss.requires_grad == bool(r["eval_mode_loss_requires_grad"])  # merged under .data: no gradient
    with torch.no_grad():
        close(method.logits(r["test_images"], classes) / 100, e["test_cosine"], 1e-6)


def test_train_mode_without_dropout_equals_merged_eval(vit, r):
    """The unmerged branch base(x) + s·x (B A)ᵀ (dropout 0): features, logits, loss and gradients."""
    method, classes = build(vit, r, hparams(dropout=0.0))
    method.train()
    t = r["train_nodrop"]
    loss = method.loss((r["images"], r["labels"]), 0)
    assert abs(loss.item() - t["loss"]) <= TOL
    loss.backward()
    check_grads(grads_of(method), t["grads"])
    with torch.no_grad():
        close(F.normalize(method.text_features(classes), dim=-1), t["text_features"], TOL)
        close(F.normalize(method.image_features(r["images"]), dim=-1), t["image_features"], TOL)
        close(method.logits(r["images"], classes), t["logits"], TOL, relative_to_max=True)
        method.eval()  # merge-on-eval computes what the unmerged branch computes
        close(method.logits(r["images"], classes), t["logits"], TOL, relative_to_max=True)


def test_dropout_on_the_lora_input_only_with_the_official_masks(vit, r):
    """Dropout 0.25 on each of q, k, v's LoRA input (the frozen path sees x), drawn text first, then
    vision, q, k, v within a block (the official call order); with the stored masks: features, logits,
    loss and gradients."""
    method, classes = build(vit, r)
    d = r["train_dropout"]
    assert d["p"] == method.hp["dropout"]
    calls: list = []
    modules = dict(method.named_modules())
    for name, mask in d["masks"].items():
        modules[ours(name)].dropout = Replay(name, mask, d["p"], calls)
    method.train()
    loss = method.loss((r["images"], r["labels"]), 0)
    assert calls == list(d["call_order"])
    assert abs(loss.item() - d["loss"]) <= TOL
    loss.backward()
    check_grads(grads_of(method), d["grads"])
    with torch.no_grad():
        close(F.normalize(method.text_features(classes), dim=-1), d["text_features"], TOL)
        close(F.normalize(method.image_features(r["images"]), dim=-1), d["image_features"], TOL)
        close(method.logits(r["images"], classes), d["logits"], TOL, relative_to_max=True)
    assert not torch.allclose(d["logits"], r["train_nodrop"]["logits"])  # the masks do move the outputs


# ----------------------------------------------------------------------------- the recorded run


def test_optimizer_schedule_and_budget_are_the_official_ones(r):
    """AdamW (betas 0.9/0.999, eps 1e-8, weight decay 1e-2: the fixed code, not the shipped 1e2),
    lr 2e-4 with a per-iteration cosine to 1e-6 over n_iters × shots = 1000 iterations."""
    hp = hparams()
    run, args = r["run"], r["args"]
    assert hp["iters"] == run["total_iters"] == args["n_iters"] * args["shots"]
    assert (hp["optimizer"], hp["lr"], hp["eps"], hp["weight_decay"]) == (
        "adamw", run["optimizer"]["lr"], run["optimizer"]["eps"], run["optimizer"]["weight_decay"])
    assert run["optimizer"]["type"] == "AdamW" and run["optimizer"]["betas"] == [0.9, 0.999]
    assert hp["batch_size"] == args["batch_size"] and hp["schedule"] == "cosine_iter" and hp["min_lr"] == 1e-6
    cfg = train_config(hp, {})
    got = torch.tensor([lr_at(hp["lr"], t, 0, 1, cfg, 0, t) for t in range(hp["iters"])], dtype=torch.float64)
    close(got, torch.tensor(run["lr_per_iter"], dtype=torch.float64), 1e-9, relative_to_max=True)


def test_the_first_steps_of_the_recorded_run_through_the_engine(vit, r):
    """The official run (dropout 0, one batch of the 8 stored images per epoch) through the engine's
    training loop, its first two steps (the 1000-step budget and its schedule kept, the passes
    bounded by `epochs`): logits and losses of iterations 1 and 2, the LoRA tensors and AdamW
    moments after steps 1 and 2, the lr of each step; then the stored final iterate (after 1000
    steps) scores the test images as the official evaluate_lora (eval mode, merged weights)."""
    hp = hparams(dropout=0.0)
    method, classes = build(vit, r, hp)
    run = r["run"]
    after, lrs, optims = [], [], []

    def snapshot(opt, args, kwargs):
        optims.append(opt)
        lrs.append(opt.param_groups[0]["lr"])
        if len(lrs) <= 2:
            params = dict(method.named_parameters())
            after.append({k: (params[ours(k)].detach().clone(), opt.state[params[ours(k)]]["exp_avg"].clone(),
                              opt.state[params[ours(k)]]["exp_avg_sq"].clone(),
                              float(opt.state[params[ours(k)]]["step"])) for k in r["params"]})

    losses, logits = [], []
    loss_fn, scores = method.loss, method.scores

    def recorded_loss(batch, epoch):
        loss = loss_fn(batch, epoch)
        losses.append(loss.item())
        return loss

    def recorded_scores(f, t):
        out = scores(f, t)
        if len(logits) < 2:
            logits.append(out.detach().clone())
        return out

    method.loss, method.scores = recorded_loss, recorded_scores
    handle = register_optimizer_step_post_hook(snapshot)
    try:
        cfg = train_config({**hp, "epochs": 2}, {})  # 2 passes of one batch each; the 1000-step schedule
        stats = train(method, lambda epoch: [(r["images"], r["labels"])], cfg, CPU)
    finally:
        handle.remove()
    assert cfg.iters == run["total_iters"] == 1000 and stats["steps"] == 2 and stats["epochs"] == 2
    assert type(optims[0]).__name__ == "AdamW" and optims[0].defaults["betas"] == (0.9, 0.999)
    assert not optims[0].defaults["amsgrad"] and optims[0].param_groups[0]["weight_decay"] == 0.01
    close(logits[0], run["logits_iter1"], TOL, relative_to_max=True)
    close(logits[1], run["logits_iter2"], TOL, relative_to_max=True)
    for i, step in enumerate(after, 1):
        want = run[f"after_step{i}"]
        for k, (p, m, v, n) in step.items():
            close(p, want["params"][k], 1e-6)
            close(m, want["exp_avg"][k], TOL, relative_to_max=True)
            close(v, want["exp_avg_sq"][k], TOL, relative_to_max=True)
            assert n == want["state_step"]
    close(torch.tensor(lrs, dtype=torch.float64), torch.tensor(run["lr_per_iter"][:2], dtype=torch.float64), 1e-12,
          relative_to_max=True)
    close(torch.tensor(losses), run["loss_per_iter"][:2], TOL)
    method.loss, method.scores = loss_fn, scores
    method.load_state_dict({ours(k): v for k, v in run["after_last_step"].items()})
    with torch.no_grad():
        cosine = method.logits(r["test_images"], classes) / 100  # eval mode: merged weights
    close(cosine, run["final_test_cosine"], 1e-5)
    acc = 100 * (cosine.argmax(1) == r["test_labels"]).float().mean().item()
    assert acc == run["final_test_acc"]


# ----------------------------------------------------------------------------- presets, precision, refusals


def test_presets_template_and_precision(vit, r):
    """official: 'a photo of a {}.' whatever the dataset, fp16 autocast + GradScaler; clean: the
    dataset's own template (the ClassSet's), the engine's auto precision. Neither selects anything."""
    official = resolve_hparams(get_method("clip_lora"), "imagenet", 16, "official")
    clean = resolve_hparams(get_method("clip_lora"), "imagenet", 16, "clean")
    assert official["template"] == "a photo of a {}." and official["precision"] == "amp"
    assert clean["template"] == "" and clean["precision"] == "auto"
    assert official["iters"] == clean["iters"] == 8000 and official["epochs"] == clean["epochs"] == 0
    assert {k: v for k, v in official.items() if k not in ("template", "precision")} == {
        k: v for k, v in clean.items() if k not in ("template", "precision")}
    method, classes = build(vit, r, hparams("clean"), load=False)
    method.eval()
    with torch.no_grad():  # B = 0: the dataset template's zero-shot features, which the ClassSet holds
        close(F.normalize(method.text_features(classes), dim=-1), classes.text_features, TOL)


def test_official_precision_is_fp16_autocast_with_a_grad_scaler(vit, r):
    """precision amp (the official torch.amp.autocast fp16 + GradScaler): fp32 LoRA tensors, a finite
    step whose loss is the fp32 loss to fp16 precision."""
    hp = hparams(precision="amp", dropout=0.0)
    method, _ = build(vit, r, hp)
    stats = train(method, lambda e: [(r["images"], r["labels"])], TrainConfig(epochs=1, lr=hp["lr"], iters=1000,
                  optimizer="adamw", weight_decay=0.01, schedule="cosine_iter", min_lr=1e-6, precision="amp"), CPU)
    assert stats["precision"]["grad_scaler"] and stats["precision"]["weights"] == "fp32"
    assert "float16 autocast" in stats["precision"]["used"]
    assert abs(stats["final_loss"] - r["run"]["loss_per_iter"][0].item()) < 5e-2
    assert all(p.dtype == torch.float32 for p in method.parameters())


def test_bad_values_are_refused_before_any_work(cli, tmp_path):
    with pytest.raises(ConfigError) as err:
        resolve_hparams(get_method("clip_lora"), "dtd", 4, "official",
                        {"rank": 0, "dropout": 1.5, "template": "a photo", "iters": -1, "min_lr": 1.0,
                         "precision": "fp16"})
    for words in ("rank=0 (must be at least 1)", "dropout=1.5 (must be between 0 and 1)", "template='a photo'",
                  "iters=-1", "min_lr=1.0 (must not exceed lr=0.0002)", "precision='fp16' (valid: auto, fp32"):
        assert words in str(err.value)
    with pytest.raises(ConfigError, match="epochs=0 with iters=0"):
        resolve_hparams(get_method("clip_lora"), "dtd", 4, "clean", {"iters": 0})
    out = tmp_path / "run"
    proc = cli("run", "--data-root", tmp_path / "no-data", "--dataset", "dtd", "--method", "clip_lora", "--shots", 4,
               "--seed", 1, "--backbone", "fewclip-tiny-vit", "--pretrained", "none", "--out", out,
               "--set", "rank=0")
    from conftest import refused

    refused(proc, "rank=0", "at least 1")
    assert not out.exists()


# ----------------------------------------------------------------------------- the engine's step budget


def test_a_step_budget_ends_training_mid_epoch():
    """iters: exactly that many steps, the last epoch cut short, the cosine over the budget to min_lr."""

    class Toy(Method):
        name = "toy_budget"

        def __init__(self):
            super().__init__({})
            self.w = torch.nn.Parameter(torch.zeros(2))

        def loss(self, batch, epoch):
            return ((self.w - batch) ** 2).sum()

    seen, lrs = [], []
    toy = Toy()

    def batches(epoch):
        for i in range(3):
            seen.append((epoch, i))
            yield torch.ones(2)

    handle = register_optimizer_step_post_hook(lambda o, a, k: lrs.append(o.param_groups[0]["lr"]))
    try:
        cfg = TrainConfig(epochs=0, iters=7, lr=0.1, optimizer="adamw", schedule="cosine_iter", min_lr=0.01)
        stats = train(toy, batches, cfg, CPU)
    finally:
        handle.remove()
    assert stats["steps"] == 7 and stats["epochs"] == 3 and seen[-1] == (2, 0)  # no batch read past the budget
    assert lrs == pytest.approx([0.01 + 0.045 * (1 + math.cos(math.pi * t / 7)) for t in range(7)], abs=1e-15)
    with pytest.raises(ConfigError, match="epochs >= 1 or a step budget"):
        train(Toy(), batches, TrainConfig(epochs=0, lr=0.1), CPU)


def test_a_run_killed_mid_budget_resumes_to_the_same_result(tmp_path):
    """A clip_lora cell whose 5-step budget ends in its second epoch (3 batches per epoch, the last
    incomplete one kept), killed after epoch 1, resumes from its checkpoint to the same result."""
    import warnings

    from fewclip.data.fixtures import write_fixture
    from fewclip.engine.run import RunSpec, run_cell

    root = tmp_path / "data"
    write_fixture("oxford_pets", root, n_classes=3, n_train=4, n_val=2, n_test=2)

    def run(out):
        spec = RunSpec(data_root=str(root), dataset="oxford_pets", method="clip_lora", backbone="fewclip-tiny-vit",
                       pretrained="none", out=str(tmp_path / out), shots=2, seed=1,
                       overrides={"iters": 5, "batch_size": 4, "lr": 0.01}, features=str(tmp_path / "features"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return run_cell(spec)

    reference = run("uninterrupted")
    assert reference["train"]["steps"] == 5 and reference["epochs"] == 3  # 2 + 2 + 1: 6 images in batches of 4
    cls = get_method("clip_lora")

    class Killed(Exception):
        pass

    def die(self, task, epoch):
        if epoch == 1:
            raise Killed

    cls.epoch_end = die
    try:
        with pytest.raises(Killed):
            run("resumed")
    finally:
        del cls.epoch_end
    assert torch.load(tmp_path / "resumed" / "train_state.pt", weights_only=True)["steps"] == 2
    resumed = run("resumed")
    assert resumed["train"]["resumed_from"] == 1 and resumed["train"]["steps"] == 5 and resumed["epochs"] == 3
    assert resumed["train"]["final_loss"] == pytest.approx(reference["train"]["final_loss"], abs=1e-6)
    assert resumed["top1"] == reference["top1"]
    got = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["state"]
    want = torch.load(tmp_path / "uninterrupted" / "checkpoint.pt", weights_only=True)["state"]
    assert set(got) == set(want) and all(torch.allclose(got[k], want[k], atol=1e-6, rtol=0) for k in want)
