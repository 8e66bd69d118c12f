"""VPT-deep, VLP and DPT equal the official fanrena/DPT code (issue 15).

The official tensors (tests/data/official/README.md, sections vpt.pt, vlp.pt, dpt.pt) are loaded
into fewclip's methods through the name maps below (official name → fewclip state-dict key), the
stored images go straight into the encoder (no transform), and every output, loss and gradient
the reference holds is compared within 1e-5 (fp32). Relative to their max: the text-context
gradients (max|g| 30-50, as the README says) and the logits, which are 100·cosine: the features
agree to ~1e-7 (fp32 round-off), which the factor 100 turns into up to ~2e-5 on logits of max 5-11.
"""

from types import SimpleNamespace

import pytest
import torch

from fewclip.methods import ClassSet, get_method, resolve_hparams
from fewclip.models.backbone import LOGIT_SCALE
from fewclip.models.prompts import encode_image
from fewclip.models.templates import class_text_features
from official_ref import backbone, close, ref

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-5
VISUAL_PROMPTS = {"image_encoder.transformer.ctx_learner.ctx": "vpt.tokens"}
TEXT_CONTEXT = {"prompt_learner.ctx": "prompt.ctx"}
EXTRACTOR = "image_encoder.transformer.extractor."
# DPT's generator of its only CAVPT layer (official index 0 = fewclip's cavpt.0). The official
# `extractor.ctx` stacks the extra key/value tokens of all CAVPT layers, [layers, 10, w]:
# fewclip's cavpt.i.kv is its row i.
CAVPT = {
    EXTRACTOR + "ctx": "cavpt.0.kv",
    EXTRACTOR + "meta_nets.0.weight": "cavpt.0.query.weight",
    EXTRACTOR + "meta_nets.0.bias": "cavpt.0.query.bias",
    EXTRACTOR + "attns.0.qmlp.weight": "cavpt.0.q.weight",
    EXTRACTOR + "attns.0.kmlp.weight": "cavpt.0.k.weight",
    EXTRACTOR + "attns.0.vmlp.weight": "cavpt.0.v.weight",
    EXTRACTOR + "lns.0.weight": "cavpt.0.head_norm.weight",
    EXTRACTOR + "lns.0.bias": "cavpt.0.head_norm.bias",
    EXTRACTOR + "classfiers.0.weight": "cavpt.0.head.weight",
    EXTRACTOR + "lns2.0.weight": "cavpt.0.norm.weight",
    EXTRACTOR + "lns2.0.bias": "cavpt.0.norm.bias",
}
STACKED = {EXTRACTOR + "ctx"}  # official [1, 10, w] = fewclip [10, w] of layer 0
NAMES = {"vpt": VISUAL_PROMPTS, "vlp": {**VISUAL_PROMPTS, **TEXT_CONTEXT},
         "dpt": {**VISUAL_PROMPTS, **TEXT_CONTEXT, **CAVPT}}


def hparams(name: str, r: dict) -> dict:
    """fewclip's settings for the reference's official cfg (dpt.py documents the mapping)."""
    cfg = r["config"]
    hp = {"n_prompts": cfg["TRAINER.VPT.N_CTX"]}
    if name != "vpt":
        hp |= {"n_ctx": cfg["TRAINER.COOP.N_CTX"], "guidance_epochs": cfg["PRETRAIN.C"]}
    if name == "dpt":
        layers = len(backbone("vit").model.visual.transformer.resblocks)
        hp |= {"cavpt_classes": cfg["TRAINER.SELECTED_COVPT.CPN"], "alpha": cfg["TRAINER.ALPHA"],
               "cavpt_layers": layers - cfg["TRAINER.TOPDOWN_SECOVPT.BOTTOMLIMIT"] + 1}
    return hp


def to_fewclip(official: str, value: torch.Tensor) -> torch.Tensor:
    return value[0] if official in STACKED else value


def build(name: str):
    """The method set up by fewclip on the tiny reference CLIP, with the official tensors loaded."""
    r = ref(name)
    bb = backbone("vit")
    names = list(r["class_names"])
    hand = class_text_features(bb, names, "dataset", r["template"])  # what the engine's ClassSet carries
    close(hand, r["text_features" if name == "vpt" else "hand_text_features"], TOL)
    classes = ClassSet(names, hand, torch.arange(len(names)), r["template"])
    cls = get_method(name)
    method = cls(resolve_hparams(cls, "oxford_pets", 1, "clean", hparams(name, r)))
    method.setup(SimpleNamespace(backbone=bb, device=torch.device("cpu"), classes=classes))
    mapping = NAMES[name]
    assert set(r["params"]) == set(mapping)
    method.load_state_dict({mapping[k]: to_fewclip(k, v) for k, v in r["params"].items()}, strict=True)
    method.eval()
    return method, classes, r


def loss_and_grads(method, images, labels, epoch: int, mapping: dict) -> tuple[float, dict]:
    """The training loss and d loss / d each learnable tensor, keyed and shaped as the official."""
    method.zero_grad(set_to_none=True)
    loss = method.loss((images, labels), epoch)
    loss.backward()
    params = dict(method.named_parameters())
    grads = {}
    for official, ours in mapping.items():
        g = params[ours].grad
        assert g is not None, f"{ours} got no gradient"
        grads[official] = g.unsqueeze(0) if official in STACKED else g
    return loss.item(), grads


def check_grads(grads: dict, expected: dict) -> None:
    assert set(grads) == set(expected)
    for k, g in grads.items():
        close(g, expected[k], TOL, relative_to_max=k in TEXT_CONTEXT)


def close_logits(a, b) -> None:
    close(a, b, TOL, relative_to_max=True)


def trainable(method) -> int:
    """What `fewclip run` records as trainable_params (engine/run.py)."""
    return sum(p.numel() for p in method.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- VPT-deep


def test_vpt_features_logits_loss_and_gradient():
    method, classes, r = build("vpt")
    images, labels = r["images"], r["labels"]
    with torch.no_grad():
        close(method.clip.encode_image(images), r["zeroshot_image_features_raw"], TOL)
        raw, _ = encode_image(method.clip.visual, images, method.vpt.tokens)
        close(raw, r["image_features_raw"], TOL)
        close(method.prompted_features(images)[0], r["image_features"], TOL)
        close_logits(method.logits(images, classes), r["logits"])
    loss, grads = loss_and_grads(method, images, labels, 0, VISUAL_PROMPTS)
    assert abs(loss - r["loss"]) <= TOL
    check_grads(grads, r["grads"])
    assert trainable(method) == sum(v.numel() for v in r["params"].values())


# ----------------------------------------------------------------------------- VLP


def test_vlp_logits_losses_and_gradients():
    method, classes, r = build("vlp")
    images, labels = r["images"], r["labels"]
    with torch.no_grad():
        f, text, selected, _ = method._forward(images, classes)
        zs = method.image_features(images)
        assert selected is None  # no CAVPT
        close(text, r["text_features"], TOL)
        close(f, r["image_features"], TOL)
        close(zs, r["zeroshot_image_features"], TOL)
        close_logits(method.logits(images, classes), r["logits"])
        close_logits(LOGIT_SCALE * zs @ text.t(), r["logits1"])
        close_logits(LOGIT_SCALE * f @ classes.text_features.t(), r["logits2"])
    for case in ("lt_C", "ge_C"):
        loss, grads = loss_and_grads(method, images, labels, r["epochs"][case], NAMES["vlp"])
        assert abs(loss - r[f"loss_{case}"]) <= TOL, case
        check_grads(grads, r[f"grads_{case}"])
    assert trainable(method) == sum(v.numel() for v in r["params"].values())


# ----------------------------------------------------------------------------- DPT


@pytest.fixture(scope="module")
def dpt():
    return build("dpt")


def test_dpt_learns_exactly_the_official_tensors(dpt):
    method, _, r = dpt
    layers = len(method.clip.visual.transformer.resblocks)
    assert method.cavpt_at == [layers - 1]  # BOTTOMLIMIT 3 of 3: CAVPT in the last layer only
    assert method.vpt.tokens.shape == r["params"]["image_encoder.transformer.ctx_learner.ctx"].shape
    learned = {n for n, p in method.named_parameters() if p.requires_grad}
    assert learned == set(NAMES["dpt"].values())
    assert trainable(method) == sum(v.numel() for v in r["params"].values())


def test_dpt_selection_class_tokens_and_logits(dpt):
    method, classes, r = dpt
    images = r["images"]
    seen = []
    last = method.clip.visual.transformer.resblocks[method.cavpt_at[0]]
    with torch.no_grad():
        zs = method.image_features(images)
        close(zs, r["zeroshot_image_features"], TOL)
        close(method.raw_text_features(classes), r["text_features_raw"], TOL)
        hook = last.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
        try:
            f, text, selected, aux = method._forward(images, classes)  # zero-shot pass, then the prompted one
        finally:
            hook.remove()
        logits = method.logits(images, classes)
    assert torch.equal(selected, r["indices"])
    K, T = selected.shape[1], r["cavpt_token_input"].shape[0]
    block_input = seen[-1]  # [B, T + K, w]: the layer's tokens, then the class-aware ones
    assert block_input.shape[1] == T + K
    close(block_input[:, :T].transpose(0, 1), r["cavpt_token_input"], TOL)
    close(block_input[:, T:].transpose(0, 1), r["class_prompt"], TOL)
    close(aux[method.cavpt_at[0]].permute(1, 0, 2).unsqueeze(0), r["layer_logits"], TOL)
    close(f, r["image_features"], TOL)
    close_logits(logits, r["logits"])
    close_logits(LOGIT_SCALE * zs @ text.t(), r["logits1"])
    close_logits(LOGIT_SCALE * f @ classes.text_features.t(), r["logits2"])


def test_dpt_generator_on_the_official_inputs(dpt):
    """The CAVPT layer alone, fed the reference's stored inputs (LND in the official code)."""
    method, _, r = dpt
    with torch.no_grad():
        tokens, logits = method.cavpt[0](r["cavpt_query_input"], r["cavpt_token_input"].transpose(0, 1))
    close(tokens.transpose(0, 1), r["class_prompt"], TOL)
    close(logits.transpose(0, 1).unsqueeze(0), r["layer_logits"], TOL)


@pytest.mark.parametrize("case", ["lt_C", "ge_C"])
def test_dpt_loss_and_gradients(dpt, case):
    method, _, r = dpt
    images, labels = r["images"], r["labels"]
    assert int((r["indices"] == labels[:, None]).sum()) == r["n_aux_rows"]
    loss, grads = loss_and_grads(method, images, labels, r["epochs"][case], NAMES["dpt"])
    assert abs(loss - r[f"loss_{case}"]) <= TOL
    check_grads(grads, r[f"grads_{case}"])


def test_dpt_loss_without_labels_in_the_top_k(dpt):
    method, _, r = dpt
    labels = r["labels_outside_topk"]
    assert not (r["indices"] == labels[:, None]).any()
    with torch.no_grad():
        loss = method.loss((r["images"], labels), r["epochs"]["lt_C"]).item()
    assert abs(loss - r["loss_lt_C_outside_topk"]) <= TOL
