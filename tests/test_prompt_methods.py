"""Prompt methods (CoOp, CoCoOp, VPT-deep, VLP, DPT) on the package's tiny ViT (issue 4)."""

import json
import math

import pytest
import torch

from fewclip.cli import main as cli_main
from fewclip.data.datasets import load_dataset
from fewclip.data.fewshot import make_manifest
from fewclip.data.datasets import Item
from fewclip.engine.inputs import CellData, ImageInputs
from fewclip.engine.run import RunSpec, train_config
from fewclip.engine.train import train
from fewclip.methods import NotApplicable, get_method, load_all, resolve_hparams
from fewclip.models.backbone import load_backbone
from fewclip.models.prompts import encode_image

DATASET, SHOTS, SEED = "caltech101", 4, 1
pytestmark = pytest.mark.usefixtures("one_torch_thread")
# the built-in methods that train through the image encoder, as the registry says
METHODS = sorted(n for n, c in load_all().items() if c.needs == "images" and c.__module__.startswith("fewclip.methods."))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import warnings

    from fewclip.data.fixtures import write_fixture

    root = tmp_path_factory.mktemp("data")
    write_fixture(DATASET, root, n_classes=4, n_train=4, n_val=1, n_test=3)
    ds = load_dataset(DATASET, root)
    backbone = load_backbone("fewclip-tiny-vit", "none", "cpu")
    with torch.no_grad():  # a trained CLIP's temperature (OpenAI's exp = 100), not the 1/0.07 of a fresh init:
        backbone.model.logit_scale.fill_(math.log(100.0))  # the methods score with the model's own scale
    spec = RunSpec(data_root=str(root), dataset=DATASET, method="coop", backbone="fewclip-tiny-vit",
                   out=str(root / "unused"), shots=SHOTS, seed=SEED, pretrained="none",
                   features=str(tmp_path_factory.mktemp("features")))
    inputs = ImageInputs(spec, lambda: backbone, torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = make_manifest(ds, SHOTS, SEED)
    return {"root": root, "ds": ds, "backbone": backbone, "inputs": inputs, "manifest": manifest}


def _items(manifest, split, ds):
    return [Item(p, int(lab), ds.classnames[int(lab)]) for p, lab in manifest[split]]


def build(env, name, seed=0, **overrides):
    """A method set up on the fixture cell, as run_cell does it."""
    cls = get_method(name)
    hp = resolve_hparams(cls, DATASET, SHOTS, "clean", overrides)
    ds, inputs = env["ds"], env["inputs"]
    classes = inputs.classes(ds, "dataset")
    torch.manual_seed(seed)
    method = cls(hp)
    cell = CellData(ds, ds, None, _items(env["manifest"], "train", ds), _items(env["manifest"], "val", ds))
    task = inputs.task(method, cell, classes, method.data_needs())
    method.setup(task)
    return method, task, classes


def sample_images(env, n=None):
    batch = next(iter(env["inputs"].test(env["ds"]).loader(batch_size=100)))
    return batch[0][:n] if n else batch[0]


def zeroshot_logits(env, classes):
    images = sample_images(env)
    return env["backbone"].logit_scale * env["backbone"].encode_images(images) @ classes.text_features.t()


# ----------------------------------------------------------------------------- equalities


def test_coop_initialised_from_words_is_zeroshot(env):
    method, _, classes = build(env, "coop", ctx_init="a photo of a")
    assert method.prompt.n_ctx == 4
    got = env["inputs"].logits(method, env["inputs"].test(env["ds"]), classes)
    want = zeroshot_logits(env, classes)
    assert got.shape == want.shape == (12, 4)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_coop_any_class_list_and_positions(env):
    method, _, classes = build(env, "coop", n_ctx=6)
    x = sample_images(env, 5)
    with torch.no_grad():
        full = method.logits(x, classes)
        sub = method.logits(x, classes.subset([3, 1]))  # new class list: prompts rebuilt
    torch.testing.assert_close(sub, full[:, [3, 1]], atol=1e-4, rtol=0)
    for position in ("middle", "front"):
        m, _, _ = build(env, "coop", n_ctx=6, class_token_position=position)
        with torch.no_grad():
            out = m.logits(x, classes)
        assert out.shape == (5, 4) and torch.isfinite(out).all()
        assert not torch.allclose(out, full)
    csc, _, _ = build(env, "coop", n_ctx=2, csc=True)
    assert csc.prompt.ctx.shape == (4, 2, 64)
    unseen = classes.subset([0, 1])
    unseen.train_index = None
    with pytest.raises(NotApplicable):
        csc.logits(x, unseen)


def test_cocoop_zero_metanet_is_coop(env):
    cocoop, _, classes = build(env, "cocoop", ctx_init="a photo of a")
    coop, _, _ = build(env, "coop", ctx_init="a photo of a")
    with torch.no_grad():
        cocoop.prompt.ctx.add_(0.05 * torch.randn_like(cocoop.prompt.ctx))
        coop.prompt.ctx.copy_(cocoop.prompt.ctx)
        cocoop.meta_net[-1].weight.zero_()
        cocoop.meta_net[-1].bias.zero_()
        x = sample_images(env, 6)
        torch.testing.assert_close(cocoop.logits(x, classes), coop.logits(x, classes), atol=1e-5, rtol=0)


def test_cocoop_batched_equals_per_image_loop(env):
    cocoop, _, classes = build(env, "cocoop")
    with torch.no_grad():
        for p in cocoop.meta_net.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = sample_images(env, 6)
    batched = cocoop.logits(x, classes)  # training path: one pass of B×C prompts, with grad
    assert batched.requires_grad
    with torch.no_grad():
        loop = torch.cat([cocoop.logits(x[i : i + 1], classes) for i in range(len(x))])
    torch.testing.assert_close(batched.detach(), loop, atol=1e-5, rtol=1e-5)  # float32 rounding


def test_vpt_without_prompt_tokens_is_zeroshot(env):
    method, _, classes = build(env, "vpt")
    assert method.vpt.tokens.shape == (2, 10, 64)
    x = sample_images(env)
    with torch.no_grad():
        for none in (None, method.vpt.tokens[:, :0], method.vpt.tokens[:0]):  # no tokens, no layers with tokens
            plain, extra = encode_image(method.clip.visual, x, none)
            torch.testing.assert_close(plain, method.clip.encode_image(x), atol=1e-5, rtol=0)
            assert extra == {}
        got = env["inputs"].logits(method, env["inputs"].test(env["ds"]), classes)
        assert not torch.allclose(got, zeroshot_logits(env, classes), atol=1e-3)


def test_dpt_without_cavpt_is_vlp(env):
    vlp, _, classes = build(env, "vlp", seed=3)
    dpt, _, _ = build(env, "dpt", seed=3, cavpt=False)
    assert set(vlp.state_dict()) == set(dpt.state_dict())
    dpt.load_state_dict(vlp.state_dict())
    x = sample_images(env, 8)
    labels = torch.arange(8) % 4
    with torch.no_grad():
        torch.testing.assert_close(dpt.logits(x, classes), vlp.logits(x, classes), atol=0, rtol=0)
        for epoch in (0, 1000):  # with and after the guidance loss
            torch.testing.assert_close(dpt.loss((x, labels), epoch), vlp.loss((x, labels), epoch))
    on, _, _ = build(env, "dpt", seed=3)
    assert len(on.cavpt) == 1 and on.cavpt_at == [1]  # the last of the tiny ViT's 2 layers
    assert on.vpt.tokens.shape == (1, 10, 64)  # VPT-deep tokens only below the CAVPT layer
    with torch.no_grad():
        assert on.logits(x, classes).shape == (8, 4)
        assert on.loss((x, labels), 0) > vlp.loss((x, labels), 0) - 1e-6  # adds α·CE of the classifier


def test_prompt_state_holds_only_learned_parameters(env):
    method, _, _ = build(env, "vlp")
    keys = set(method.state_dict())
    assert keys == {"prompt.ctx", "vpt.tokens"}
    assert sum(p.numel() for p in method.parameters()) == 16 * 64 + 2 * 10 * 64
    groups = method.param_groups()
    assert [g["lr"] for g in groups] == [0.01, 0.002] and [g["warmup_epochs"] for g in groups] == [10, 1]


def dpt_official_tensors(n_prompts=10, n_ctx=16, width=64, embed=32, n_classes=4, layers=2, kv=10, qk=32):
    """The official DPT's learnable tensors for one CAVPT layer (DPT.py: ctx_learner, extractor, prompt_learner)."""
    return {
        "vpt.tokens": (layers - 1) * n_prompts * width,  # ctx_learner.ctx: layers 1..BOTTOMLIMIT-1
        "cavpt.0.kv": kv * width,  # extractor.ctx
        "cavpt.0.query.weight": width * embed, "cavpt.0.query.bias": width,  # meta_nets (with bias)
        "cavpt.0.q.weight": qk * width, "cavpt.0.k.weight": qk * width,  # attns qmlp, kmlp (no bias)
        "cavpt.0.v.weight": width * width,  # attns vmlp (no bias)
        "cavpt.0.head_norm.weight": width, "cavpt.0.head_norm.bias": width,  # lns
        "cavpt.0.head.weight": n_classes * width,  # classfiers (no bias)
        "cavpt.0.norm.weight": width, "cavpt.0.norm.bias": width,  # lns2
        "prompt.ctx": n_ctx * width,  # prompt_learner.ctx
    }


def test_dpt_state_holds_the_official_tensors(env):
    method, _, _ = build(env, "dpt")
    expected = dpt_official_tensors()
    assert {k: v.numel() for k, v in method.state_dict().items()} == expected
    assert sum(p.numel() for p in method.parameters() if p.requires_grad) == sum(expected.values())
    groups = method.param_groups()
    assert [g["lr"] for g in groups] == [0.01, 0.002] and [g["warmup_epochs"] for g in groups] == [10, 1]
    assert {id(p) for p in groups[1]["params"]} == {id(method.prompt.ctx)}


def test_dpt_cavpt_in_every_layer(env):
    """cavpt_layers = all layers (official BOTTOMLIMIT 1): no VPT-deep tokens, one generator per
    layer, each reading that layer's input; the aux loss reaches every generator's head."""
    method, _, classes = build(env, "dpt", cavpt_layers=5)  # more than the tiny ViT's 2 layers: all of them
    assert method.cavpt_at == [0, 1] and len(method.cavpt) == 2 and method.vpt.tokens.shape == (0, 10, 64)
    x = sample_images(env, 8)
    with torch.no_grad():
        zs = method.image_features(x)
        labels = (zs @ classes.text_features.t()).argmax(1)  # inside every image's top-K
    method.loss((x, labels), 0).backward()
    for m in method.cavpt:
        assert m.head.weight.grad.abs().sum() > 0 and m.kv.grad.abs().sum() > 0

def test_hyper_parameters_follow_spec():
    coop = get_method("coop")
    assert [resolve_hparams(coop, "dtd", k, "clean")["epochs"] for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert resolve_hparams(coop, "imagenet", 16, "clean")["epochs"] == 50
    # CoCoOp's protocols: vit_b16_c4_ep10_batch1_ctxv1; few-shot: DPT's cocoop.yaml (16 random contexts)
    hp = resolve_hparams(get_method("cocoop"), "dtd", 16, "clean", None, "base2new")
    assert (hp["n_ctx"], hp["ctx_init"], hp["epochs"], hp["batch_size"], hp["lr"]) == (4, "a photo of a", 10, 1, 0.002)
    hp = resolve_hparams(get_method("cocoop"), "dtd", 16, "clean")
    assert (hp["n_ctx"], hp["ctx_init"], hp["epochs"], hp["batch_size"], hp["lr"]) == (16, "", 10, 1, 0.002)
    vpt = resolve_hparams(get_method("vpt"), "dtd", 1, "clean")
    assert (vpt["n_prompts"], vpt["lr"], vpt["warmup_epochs"]) == (10, 0.01, 10)
    assert resolve_hparams(get_method("vpt"), "imagenet", 1, "clean")["warmup_epochs"] == 10  # VPT.py: no ImageNet exception
    dpt = get_method("dpt")
    assert [resolve_hparams(dpt, "dtd", k, "clean")["epochs"] for k in (1, 16)] == [60, 100]
    hp = resolve_hparams(dpt, "imagenet", 1, "clean")
    assert (hp["epochs"], hp["guidance_epochs"], hp["alpha"], hp["cavpt_classes"]) == (20, 10, 0.3, 10)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", METHODS)
def test_training_loss_falls(env, name):
    # kgcoop: W = 1, not 8; on the random tiny CLIP, W = 8 lets the CE fall (6.5 -> 1.3) but not the sum
    method, task, classes = build(env, name, epochs=8, lr=0.05, warmup_epochs=0, batch_size=4,
                                  **({"text_lr": 0.05, "text_warmup_epochs": 0} if name in ("vlp", "dpt") else {}),
                                  **({"kg_weight": 1.0} if name == "kgcoop" else {}))
    train_set = task.train
    images, labels = next(iter(train_set.loader(batch_size=100)))
    epoch = 0 if name in ("vlp", "dpt") else 1

    def fixed_loss():
        method.eval()
        with torch.no_grad():
            return method.loss((images, labels), epoch).item()

    before = fixed_loss()
    stats = train(method, env["inputs"].batches(task, method.data_needs(), SEED), train_config(method.hp, {}),
                  torch.device("cpu"))
    after = fixed_loss()
    assert stats["steps"] == 8 * (len(train_set) // 4)
    assert after < before * 0.9, (before, after)


def _run(env, tmp_path, method, *sets, backbone="fewclip-tiny-vit"):
    out = tmp_path / method
    argv = ["run", "--data-root", str(env["root"]), "--dataset", DATASET, "--method", method, "--shots", "2",
            "--seed", "1", "--out", str(out), "--backbone", backbone, "--pretrained", "none", "--device", "cpu",
            "--features", str(tmp_path / "features")]
    for s in sets:
        argv += ["--set", s]
    return cli_main(argv), out


@pytest.mark.parametrize("name", METHODS)
def test_fewclip_run_with_overrides(env, tmp_path, name):
    extra = {"coop": "n_ctx=3", "cocoop": "batch_size=4", "vpt": "n_prompts=3", "vlp": "n_prompts=3",
             "dpt": "cavpt_classes=2"}.get(name, "batch_size=4")
    with pytest.warns(UserWarning):  # the fixture's val split is smaller than 2 shots
        rc, out = _run(env, tmp_path, name, "epochs=2", extra)
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    key, value = extra.split("=")
    assert metrics["epochs"] == 2 and metrics["train"]["epochs"] == 2
    assert metrics["hparams"][key] == int(value)
    assert metrics["n_test"] == 12 and metrics["top1"] is not None
    assert not (out / "train_state.pt").exists() and (out / "checkpoint.pt").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=True)["state"]
    assert metrics["trainable_params"] == sum(t.numel() for t in state.values())
    if name == "coop":
        assert state["prompt.ctx"].shape == (3, 64)
    if name == "cocoop":
        assert metrics["train"]["steps"] == 2 * (8 // 4)
    if name == "dpt":  # the official set of learnable tensors, nothing else
        assert {k: v.numel() for k, v in state.items()} == dpt_official_tensors()


@pytest.mark.parametrize("name", ["vpt", "vlp", "dpt"])
def test_resnet_backbone_is_a_clear_error(env, tmp_path, capsys, name):
    rc, out = _run(env, tmp_path, name, "epochs=1", backbone="fewclip-tiny-rn")  # refused before loading it
    err = capsys.readouterr().err
    assert rc == 2
    assert f"method {name} needs open_clip's VisionTransformer" in err and "fewclip-tiny-rn has a ModifiedResNet" in err
    assert "Traceback" not in err
    assert not (out / "metrics.json").exists()
