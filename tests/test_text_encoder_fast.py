"""The text encoder without waste (issue 19.1-3): exact against the padded open_clip path, the
per-image loop and the official reference outputs; token counts; the recomputation rule."""

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from official_ref import backbone as ref_backbone
from official_ref import close, ref
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from fewclip.models import prompts, text_encoder
from fewclip.models.backbone import LOGIT_SCALE, load_backbone
from fewclip.models.prompts import TextPrompts, encode_prompts, encode_text_embeddings
from fewclip.models.text_encoder import (
    activation_bytes, encode_causal, encode_text_open_clip, eot_index, fast_path_supported, length_groups,
    should_recompute, token_positions)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAMES = list(IMAGENET_CLASSNAMES[::40])  # 25 names of 1 to 8 BPE tokens
TOL = 1e-5


@pytest.fixture(scope="module")
def bb():
    return load_backbone("fewclip-tiny-vit", "none", "cpu")


@contextlib.contextmanager
def text_path(fast: bool):
    before = prompts.FAST_TEXT
    prompts.FAST_TEXT = fast
    try:
        yield
    finally:
        prompts.FAST_TEXT = before


def build(bb, name, **overrides):
    """A CoOp/CoCoOp method on the tiny ViT with NAMES as its classes (as bench/gpu_path.py does)."""
    from fewclip.engine.inputs import ImageTask
    from fewclip.methods import ClassSet, get_method, resolve_hparams

    torch.manual_seed(0)
    C = len(NAMES)
    classes = ClassSet(NAMES, F.normalize(torch.randn(C, bb.embed_dim), dim=-1), torch.arange(C))
    cls = get_method(name)
    hp = resolve_hparams(cls, "imagenet", 16, "clean", overrides)
    method = cls(hp)
    method.setup(ImageTask(bb, classes, None, None, "imagenet", 16, 1, "clean", hp, torch.device("cpu"), None))
    with torch.no_grad():  # larger than the inits, so that every part visibly matters
        method.prompt.ctx.normal_(0, 0.3)
        for p in getattr(method, "meta_net", torch.nn.Linear(1, 1)).parameters():
            p.add_(0.5 * torch.randn_like(p))
    method.train()
    return method, classes


def batch(bb, n=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, bb.image_size, bb.image_size, generator=g), torch.randint(len(NAMES), (n,), generator=g)


def forward_backward(method, classes, images, labels, per_image=False):
    """Logits, loss and gradients of every trainable parameter (per_image: the official loop)."""
    method.zero_grad(set_to_none=True)
    if per_image:
        logits = torch.cat([method.logits(images[i : i + 1], classes) for i in range(len(images))])
    else:
        logits = method.logits(images, classes)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.requires_grad}
    return logits.detach(), loss.item(), grads


def scaled(t, tol=TOL):
    """fp32 round-off grows with the values (logits up to ~30, gradients up to ~100): tol relative
    to the largest |value|, and absolute below 1."""
    return tol * max(1.0, torch.as_tensor(t).abs().max().item())


def assert_same(a, b, tol=TOL):
    (la, lossa, ga), (lb, lossb, gb) = a, b
    close(la, lb, scaled(lb, tol))
    assert abs(lossa - lossb) <= scaled(lossb, tol)
    assert ga.keys() == gb.keys() and ga
    for n in ga:
        close(ga[n], gb[n], scaled(gb[n], tol))


# ----------------------------------------------------------------------------- exactness


def test_blocks_with_sdpa_equal_open_clip(bb):
    """The block math (SDPA, is_causal, no padding) against open_clip's transformer with its mask."""
    model = bb.model
    assert fast_path_supported(model)
    full = bb.tokenizer([f"a photo of a {n}." for n in NAMES])
    tokens = full[:, : int(full.argmax(-1).max()) + 1]
    x = (model.token_embedding(tokens) + 0.1 * torch.randn(*tokens.shape, 64)).requires_grad_(True)
    fast = encode_causal(model, x, eot_index(model, tokens))[0]
    (g_fast,) = torch.autograd.grad(fast.pow(2).sum(), x)
    slow = encode_text_open_clip(model, x, tokens)
    (g_slow,) = torch.autograd.grad(slow.pow(2).sum(), x)
    close(fast, slow, scaled(slow))
    close(g_fast, g_slow, scaled(g_slow))
    assert g_slow.abs().max() > 0
    with torch.no_grad():  # and open_clip's own encode_text on the plain token ids
        want = model.encode_text(full)  # all 77 positions
        close(encode_text_embeddings(model, model.token_embedding(full), full), want, scaled(want))


@pytest.mark.parametrize("overrides", [
    {}, {"ctx_init": "a photo of a"}, {"ctx_init": "a lowpoly photo of a"}, {"n_ctx": 4, "csc": True},
    {"n_ctx": 6, "class_token_position": "middle"}, {"n_ctx": 6, "class_token_position": "front"},
], ids=["rand16_end", "init_end", "init_multi_bpe_word_end", "csc_end", "middle", "front"])
def test_coop_fast_equals_padded(bb, overrides):
    method, classes = build(bb, "coop", **overrides)
    assert len(length_groups(eot_index(bb.model, method.prompt.bank(NAMES).tokens))) >= 4
    images, labels = batch(bb)
    with text_path(True):
        fast = forward_backward(method, classes, images, labels)
    with text_path(False):
        padded = forward_backward(method, classes, images, labels)
    assert_same(fast, padded)


@pytest.mark.parametrize("position", ["end", "middle"])
def test_cocoop_fast_equals_padded_and_per_image_loop(bb, position):
    method, classes = build(bb, "cocoop", class_token_position=position)
    images, labels = batch(bb)
    with text_path(True):
        fast = forward_backward(method, classes, images, labels)
        fast_loop = forward_backward(method, classes, images, labels, per_image=True)
    with text_path(False):
        padded = forward_backward(method, classes, images, labels)
        padded_loop = forward_backward(method, classes, images, labels, per_image=True)
    assert_same(fast, padded)
    assert_same(fast, padded_loop)
    assert_same(fast_loop, padded_loop)
    assert set(fast[2]) >= {"prompt.ctx", "meta_net.0.weight", "meta_net.2.bias"}


def test_recomputation_is_exact_and_really_recomputes(bb, monkeypatch):
    method, classes = build(bb, "cocoop")
    images, labels = batch(bb, 2)
    calls = []
    # a pre-hook: recomputation stops as soon as the saved tensors are back (after-forward hooks never run)
    hook = bb.model.transformer.resblocks[0].mlp.c_fc.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        kept = forward_backward(method, classes, images, labels)
        n_kept = len(calls)
        calls.clear()
        monkeypatch.setattr(text_encoder, "CPU_ACTIVATION_BYTES", 0)
        recomputed = forward_backward(method, classes, images, labels)
    finally:
        hook.remove()
    assert len(calls) == 2 * n_kept  # every block ran again in the backward
    assert_same(recomputed, kept)


# ----------------------------------------------------------------------------- official outputs


def _coop_case(variant):
    r = ref("coop")
    v = r["variants"][variant]
    cfg = v["cfg"]
    bb = ref_backbone("vit")
    tp = TextPrompts(bb.model, bb.tokenizer, cfg["TRAINER.COOP.N_CTX"], cfg["TRAINER.COOP.CTX_INIT"],
                     bool(cfg["TRAINER.COOP.CSC"]), len(r["class_names"]), cfg["TRAINER.COOP.CLASS_TOKEN_POSITION"])
    with torch.no_grad():
        tp.ctx.copy_(v["params"]["prompt_learner.ctx"])
    return r, v, bb, tp


OFFICIAL_SCALE = float(torch.tensor(math.log(100.0)).exp())  # logit_scale.exp() in fp32


@pytest.mark.parametrize("variant", ["rand16_end", "init_a_photo_of_a_end", "csc16_end", "rand16_middle"])
def test_fast_path_equals_official_coop(variant):
    r, v, bb, tp = _coop_case(variant)
    assert fast_path_supported(bb.model) and prompts.FAST_TEXT
    bank = tp.bank(r["class_names"])
    assert torch.equal(bank.tokens, v["tokenized_prompts"][:, : bank.tokens.shape[1]])
    with torch.no_grad():
        f = F.normalize(bb.model.encode_image(r["images"]), dim=-1)
    text = encode_prompts(tp, bank)
    logits = OFFICIAL_SCALE * f @ text.t()
    loss = F.cross_entropy(logits, r["labels"])
    (grad,) = torch.autograd.grad(loss, tp.ctx)
    close(text, v["text_features"], TOL)
    close(logits, v["logits"], TOL * 10)  # logits up to ~10
    assert abs(loss.item() - v["loss"]) <= TOL
    close(grad, v["grads"]["prompt_learner.ctx"], TOL, relative_to_max=True)


def test_fast_path_equals_official_cocoop():
    r = ref("cocoop")
    p = r["params"]
    bb = ref_backbone("vit")
    tp = TextPrompts(bb.model, bb.tokenizer, r["n_ctx"], r["config"]["TRAINER.COCOOP.CTX_INIT"])
    meta = torch.nn.Sequential(torch.nn.Linear(64, 4), torch.nn.ReLU(), torch.nn.Linear(4, 64))
    with torch.no_grad():
        tp.ctx.copy_(p["prompt_learner.ctx"])
        for i, layer in ((0, "linear1"), (2, "linear2")):
            meta[i].weight.copy_(p[f"prompt_learner.meta_net.{layer}.weight"])
            meta[i].bias.copy_(p[f"prompt_learner.meta_net.{layer}.bias"])
        f = F.normalize(bb.model.encode_image(r["images"]), dim=-1)
    close(f, r["image_features"], TOL)
    bank = tp.bank(r["class_names"])
    ctx = tp.ctx.unsqueeze(0) + meta(f).unsqueeze(1)
    text = encode_prompts(tp, bank, ctx, per_image=True)  # [B, C, d], one pass for the batch
    logits = OFFICIAL_SCALE * torch.einsum("bd,bcd->bc", f, text)
    loss = F.cross_entropy(logits, r["labels"])
    params = {"prompt_learner.ctx": tp.ctx, "prompt_learner.meta_net.linear1.weight": meta[0].weight,
              "prompt_learner.meta_net.linear1.bias": meta[0].bias,
              "prompt_learner.meta_net.linear2.weight": meta[2].weight,
              "prompt_learner.meta_net.linear2.bias": meta[2].bias}
    grads = torch.autograd.grad(loss, list(params.values()))
    close(text, F.normalize(r["text_features_raw"], dim=-1), TOL)
    close(logits, r["logits"], TOL * 10)
    assert abs(loss.item() - r["loss"]) <= TOL
    for (name, _), g in zip(params.items(), grads):
        close(g, r["grads"][name], TOL, relative_to_max=True)


# ----------------------------------------------------------------------------- what is computed


def test_token_positions_are_those_computed(bb):
    """Token rows through the first block's MLP: the shared prefix once per image, then each class
    only up to its EOT; the padded path computes images x classes x longest prompt."""
    method, classes = build(bb, "cocoop")
    images, _ = batch(bb, 3)
    bank = method.prompt.bank(NAMES)
    ends = eot_index(bb.model, bank.tokens)
    rows = []
    hook = bb.model.transformer.resblocks[0].mlp.register_forward_hook(
        lambda m, inp, out: rows.append(inp[0].shape[:-1].numel()))
    try:
        with torch.no_grad(), text_path(True):
            method.logits(images, classes)
        fast = sum(rows)
        rows.clear()
        with torch.no_grad(), text_path(False):
            method.logits(images, classes)
        padded = sum(rows)
    finally:
        hook.remove()
    M = method.prompt.n_ctx
    assert fast == token_positions(ends - 1 - M, 1 + M, 3) == 3 * (1 + M + int((ends - M).sum()))
    assert padded == 3 * len(NAMES) * bank.tokens.shape[1]
    assert fast < padded / 2


@pytest.mark.parametrize("prefix, n_ctx, padded, exact, shared", [
    ("a photo of a", 4, 18000, 9165, 4170), (" ".join(["X"] * 16), 16, 30000, 21165, 4182)])
def test_imagenet_token_positions_of_the_issue(bb, prefix, n_ctx, padded, exact, shared):
    """The counts per image with open_clip's tokenizer on the 1000 ImageNet names."""
    tokens = bb.tokenizer([f"{prefix} {n.replace('_', ' ')}." for n in IMAGENET_CLASSNAMES])
    ends = eot_index(bb.model, tokens)
    assert len(IMAGENET_CLASSNAMES) * (int(ends.max()) + 1) == padded
    assert token_positions(ends) == exact
    assert token_positions(ends - 1 - n_ctx, 1 + n_ctx) == shared


def test_unsupported_models_use_open_clip(bb):
    model = copy.deepcopy(bb.model)
    model.text_pool_type = "first"
    assert not fast_path_supported(model)
    tokens = bb.tokenizer(NAMES[:3])
    with torch.no_grad():
        close(encode_text_embeddings(model, model.token_embedding(tokens), tokens), model.encode_text(tokens), 0)


# ----------------------------------------------------------------------------- memory rule


def test_recompute_decision_from_free_memory(bb):
    GiB = 1 << 30
    assert should_recompute(40 * GiB, free_bytes=50 * GiB)  # an 80 GB H100 with the model loaded
    assert not should_recompute(40 * GiB, free_bytes=130 * GiB)  # a 141 GB H200
    assert not should_recompute(int(0.6 * 10 * GiB) - 1, free_bytes=10 * GiB)
    assert should_recompute(int(0.6 * 10 * GiB) + 1, free_bytes=10 * GiB)
    assert not should_recompute(text_encoder.CPU_ACTIVATION_BYTES, None)  # CPU: the fixed budget
    assert should_recompute(text_encoder.CPU_ACTIVATION_BYTES + 1, None)
    # tiny text tower: 2 layers, width 64, MLP 256, 2 heads: (640 + 768 + 2 * keys) values per position and layer
    assert activation_bytes(bb.model, 1000, 18, 4) == 1000 * 2 * (640 + 768 + 36) * 4
