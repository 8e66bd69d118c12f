"""Tiny members of modern open_clip families (issue 28): LAION (GELU), MetaCLIP/DFN (QuickGELU),
EVA02 (timm tower) and SigLIP (timm MAP tower, bidirectional text, logit bias, HF tokenizer).

Each tiny family must keep the real family's architecture: its config's flags equal those of
open_clip's real config, and the model built from it uses the same module classes and tower
settings as the real model (built on the meta device, so nothing is allocated or downloaded)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import open_clip
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.pretrained import get_pretrained_cfg
from open_clip.timm_model import TimmModel
from open_clip.tokenizer import HFTokenizer, SimpleTokenizer
from open_clip.transformer import QuickGELU

from fewclip.data import demo
from fewclip.models import families
from fewclip.models.backbone import load_backbone, register_package_models

FAMILIES = families.FAMILIES
REAL = families.REFERENCE_CONFIGS
# Sizes (and the names of the sized timm towers / the tokenizer's location) may differ from the
# real config; every other key is an architecture flag and must be equal.
SIZE_KEYS = {"embed_dim", "image_size", "layers", "width", "head_width", "heads", "patch_size",
             "context_length", "vocab_size", "timm_model_name", "hf_tokenizer_name"}
# A released checkpoint of each real family: its preprocessing and QuickGELU flag (pretrained.py).
TAGS = {"fewclip-tiny-laion": ("ViT-B-16", "laion2b_s34b_b88k"),
        "fewclip-tiny-metaclip": ("ViT-B-16-quickgelu", "metaclip_fullcc"),
        "fewclip-tiny-eva": ("EVA02-B-16", "merged2b_s8b_b131k"),
        "fewclip-tiny-siglip": ("ViT-B-16-SigLIP", "webli")}
TEXTS = ["a photo of a red circle.", "striped texture.", "a photo of a zebra, a type of pet."]


@pytest.fixture(scope="module")
def backbones(one_torch_thread):
    return {name: load_backbone(name, "none") for name in FAMILIES}


def _flags(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and key in ("vision_cfg", "text_cfg"):
            out.update(_flags(value, f"{key}."))
        elif key not in SIZE_KEYS:
            out[prefix + key] = value
    return out


def _text(model):
    """(attn_mask, pool_type, projection, final LayerNorm) of either CLIP class's text tower."""
    t = model.text if isinstance(model, CustomTextCLIP) else model
    pool = t.pool_type if isinstance(model, CustomTextCLIP) else t.text_pool_type
    return t.attn_mask, pool, t.text_projection, t.ln_final


def _signature(model) -> dict:
    """The architecture of an open_clip model, independent of its sizes."""
    mask, pool, proj, ln_final = _text(model)
    sig = {
        "class": type(model).__name__,
        "visual": type(model.visual).__name__,
        "module_classes": sorted({type(m).__name__ for m in model.modules()}),
        # every module (layer indices collapsed) with its class: LayerNorm vs Identity slots,
        # pooling heads, q/k norms, ...; and every parameter/buffer name (biases, class token, ...)
        "modules": sorted({(_layerless(n), type(m).__name__) for n, m in model.named_modules()}),
        "state": sorted({_layerless(n) for n in model.state_dict()}),
        "activations": sorted({type(m).__name__ for m in model.modules()
                               if isinstance(m, (nn.GELU, QuickGELU, nn.SiLU, nn.ReLU))}),
        "layernorm_eps": sorted({m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}),
        "text_causal_mask": mask is not None,
        "text_pool": pool,
        "text_proj": (type(proj).__name__, isinstance(proj, nn.Linear) and proj.bias is not None),
        "text_ln_eps": ln_final.eps,
        "logit_bias": model.logit_bias is not None,
    }
    if isinstance(model.visual, TimmModel):
        trunk = model.visual.trunk
        mlp = trunk.blocks[0].mlp
        fc = getattr(mlp, "fc1", None) or getattr(mlp, "fc1_g")
        sig.update(
            trunk=type(trunk).__name__,
            global_pool=trunk.global_pool,
            class_token=getattr(trunk, "cls_token", None) is not None,
            prefix_tokens=trunk.num_prefix_tokens,
            rope=getattr(trunk, "rope", None) is not None,
            head=(type(trunk.head).__name__, getattr(trunk.head, "out_features", None) == model.text.output_dim),
            adapter_head=[type(m).__name__ for m in model.visual.head],
            mlp=(type(mlp).__name__, round(fc.out_features / fc.in_features, 1)),
            attn=sorted(n for n, _ in trunk.blocks[0].attn.named_children()),
        )
    else:
        sig.update(vision_pool=model.visual.pool_type, vision_ln_pre=type(model.visual.ln_pre).__name__)
    return sig


def _layerless(name: str) -> str:
    return re.sub(r"\.\d+(?=\.|$)", ".N", name)


def _real_model_on_meta(name: str):
    with torch.device("meta"):
        return open_clip.create_model(name, pretrained=None, device="meta")


@pytest.mark.parametrize("name", FAMILIES)
def test_config_has_the_real_familys_flags_and_tiny_sizes(name):
    register_package_models()
    ours, real = open_clip.get_model_config(name), open_clip.get_model_config(REAL[name])
    assert _flags(ours) == _flags(real)
    assert ("hf_tokenizer_name" in ours["text_cfg"]) == ("hf_tokenizer_name" in real["text_cfg"])
    vision, text = ours["vision_cfg"], ours["text_cfg"]
    assert vision["image_size"] == 32 and ours["embed_dim"] == 64
    assert text["layers"] == 2 and text["width"] <= 96
    if "timm_model_name" in vision:
        import timm

        assert timm.is_model(vision["timm_model_name"]) and vision["timm_model_name"].startswith("fewclip_tiny_")
    else:
        assert vision["layers"] == 2 and vision["patch_size"] == 8 and vision["width"] <= 96


def test_open_clip_gets_the_configs_without_preprocess_cfg():
    """open_clip passes every key of a model config to the model class: the registered copies
    drop `preprocess_cfg` (which fewclip reads from the package file) and resolve the tokenizer."""
    register_package_models()
    for name in FAMILIES:
        assert name in open_clip.list_models()
        raw = json.loads(families.family_config_file(name).read_text())
        assert raw["preprocess_cfg"] == families.preprocess_cfg(name)
        cfg = open_clip.get_model_config(name)
        assert "preprocess_cfg" not in cfg and cfg == families.open_clip_config(raw)
    # the package directory registered again, after the copies: registering the families again
    # puts the copies back on top
    open_clip.add_model_config(families.family_config_file(FAMILIES[0]).parent)
    assert "preprocess_cfg" in open_clip.get_model_config(FAMILIES[0])
    families.register_tiny_families()
    assert all("preprocess_cfg" not in open_clip.get_model_config(name) for name in FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_model_has_the_real_familys_architecture(name, backbones):
    assert _signature(backbones[name].model) == _signature(_real_model_on_meta(REAL[name]))


def test_family_specifics(backbones):
    laion, meta = backbones["fewclip-tiny-laion"].model, backbones["fewclip-tiny-metaclip"].model
    eva, sig = backbones["fewclip-tiny-eva"].model, backbones["fewclip-tiny-siglip"].model

    def acts(m):
        return {type(x) for x in m.modules() if isinstance(x, (nn.GELU, QuickGELU))}

    assert type(laion) is CLIP and acts(laion) == {nn.GELU}
    assert type(meta) is CLIP and acts(meta) == {QuickGELU}
    assert laion.logit_bias is None and meta.logit_bias is None and eva.logit_bias is None

    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    assert type(eva) is CustomTextCLIP and isinstance(eva.visual, TimmModel)
    trunk = eva.visual.trunk
    assert isinstance(trunk, Eva) and trunk.rope is not None and trunk.global_pool == "token"
    assert trunk.cls_token is not None and isinstance(trunk.head, nn.Linear) and trunk.head.out_features == 64
    assert eva.text.attn_mask is not None and eva.text.pool_type == "argmax"

    assert type(sig) is CustomTextCLIP and isinstance(sig.visual, TimmModel)
    trunk = sig.visual.trunk
    assert isinstance(trunk, VisionTransformer) and trunk.cls_token is None and trunk.global_pool == "map"
    assert trunk.attn_pool is not None and isinstance(trunk.head, nn.Identity) and len(sig.visual.head) == 0
    assert sig.text.attn_mask is None and sig.text.pool_type == "last"
    assert isinstance(sig.text.text_projection, nn.Linear) and sig.text.text_projection.bias is not None
    assert sig.text.ln_final.eps == 1e-6
    assert isinstance(sig.logit_bias, nn.Parameter) and float(sig.logit_bias.detach()) == -10.0


@pytest.mark.parametrize("name", FAMILIES)
def test_preprocess_cfg_is_the_real_familys(name):
    real_name, tag = TAGS[name]
    real = get_pretrained_cfg(real_name, tag)
    ours = families.preprocess_cfg(name)
    for key in ("mean", "std", "interpolation", "resize_mode"):
        assert ours[key] == (list(real[key]) if isinstance(real[key], tuple) else real[key]), key
    # the QuickGELU flag of the family's released weights is the tiny config's
    register_package_models()
    assert bool(open_clip.get_model_config(name).get("quick_gelu", False)) == bool(real.get("quick_gelu", False))


def test_metaclip_and_dfn_weights_are_quickgelu_laion_not():
    assert get_pretrained_cfg("ViT-B-16", "dfn2b")["quick_gelu"] is True
    assert get_pretrained_cfg("ViT-B-16-quickgelu", "metaclip_400m")["quick_gelu"] is True
    assert not get_pretrained_cfg("ViT-B-16", "laion2b_s34b_b88k").get("quick_gelu", False)


# ----------------------------------------------------------------------------- tokenizers


@pytest.fixture(scope="module")
def siglip_tok():
    register_package_models()
    return open_clip.get_tokenizer("fewclip-tiny-siglip")


@pytest.fixture(scope="module")
def pieces():
    path = Path(families.resolve_package_path(families.PACKAGE_PREFIX + families.SIGLIP_TOKENIZER))
    vocab = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    return {piece: i for i, (piece, _score) in enumerate(vocab)}


def test_siglip_tokenizer_is_registered_from_the_package():
    register_package_models()
    name = open_clip.get_model_config("fewclip-tiny-siglip")["text_cfg"]["hf_tokenizer_name"]
    path = Path(name)
    assert path.is_absolute() and (path / "tokenizer.json").is_file() and (path / "tokenizer_config.json").is_file()
    assert path == Path(str(families._package_dir())) / "tokenizers" / "fewclip-tiny-siglip"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(path)).eos_token == "</s>"


def test_siglip_tokenizer_layout(siglip_tok, pieces):
    assert isinstance(siglip_tok, HFTokenizer)
    ids = siglip_tok(TEXTS[:2])
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    eos, pad = pieces["</s>"], siglip_tok.tokenizer.pad_token_id
    assert (eos, pad, pieces["<pad>"], pieces["<unk>"]) == (1, 1, 0, 2)  # T5/SigLIP c4-en ids
    assert siglip_tok.tokenizer.bos_token is None
    words = ["a", "photo", "of", "a", "red", "circle"]  # no start token, `</s>`, then padding
    assert ids[0].tolist() == [pieces["▁" + w] for w in words] + [eos] + [pad] * (16 - len(words) - 1)
    assert ids[1].tolist() == [pieces["▁striped"], pieces["▁texture"], eos] + [pad] * 13
    # canonicalize: lower case, punctuation removed
    assert torch.equal(siglip_tok(["A Photo of a RED circle!"]), siglip_tok(["a photo of a red circle"]))
    # truncated to the context length, `</s>` kept last
    long = siglip_tok([" ".join(["red circle"] * 20)])
    assert long.shape == (1, 16) and long[0, -1] == eos and (long[0, :-1] != eos).all()
    vocab_size = open_clip.get_model_config("fewclip-tiny-siglip")["text_cfg"]["vocab_size"]
    assert vocab_size == len(pieces) == len(siglip_tok.tokenizer)


def test_siglip_tokenizer_covers_demo_words(siglip_tok, pieces):
    names = demo.shape_classnames() + list(demo.TEXTURES) + list(demo.SCENES)
    for text in names + families.tokenizer_words():
        ids = siglip_tok.tokenizer(text, add_special_tokens=False).input_ids
        assert ids == [pieces["▁" + w] for w in text.split()], text
    # an unknown word splits into letters (as sentencepiece); an unknown character is <unk>
    ids = siglip_tok.tokenizer("zebra", add_special_tokens=False).input_ids
    assert pieces["<unk>"] not in ids and len(ids) > 1
    assert pieces["<unk>"] in siglip_tok(["a photo of a ñandu"])[0].tolist()


@pytest.mark.parametrize("name", ["fewclip-tiny-laion", "fewclip-tiny-metaclip", "fewclip-tiny-eva"])
def test_clip_bpe_tokenizer(name, backbones):
    tok = backbones[name].tokenizer
    assert isinstance(tok, SimpleTokenizer)
    ids = tok(TEXTS)
    assert ids.shape == (3, 77) and (ids[:, 0] == tok.sot_token_id).all()


# ----------------------------------------------------------------------------- weights and forward


@pytest.mark.parametrize("name", FAMILIES)
def test_state_dict_round_trip_and_forward(name, tmp_path, one_torch_thread):
    bb = load_backbone(name, "none")
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=gen)
    tokens = bb.tokenizer(TEXTS)
    with torch.no_grad():
        at_init = bb.model(images, tokens)
        for p in bb.model.parameters():  # weights no random init has: the loaded model must read them
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        ours = bb.model(images, tokens)
    path = tmp_path / f"{name}.pt"
    torch.save(bb.model.state_dict(), path)
    loaded = load_backbone(name, str(path))
    with torch.no_grad():
        theirs = loaded.model(images, tokens)
    assert len(ours) == len(theirs) == (4 if name == "fewclip-tiny-siglip" else 3)  # + logit_bias
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert not torch.allclose(ours[0], at_init[0]) and not torch.allclose(ours[1], at_init[1])
    image_f, text_f = ours[0], ours[1]
    assert image_f.shape == (3, 64) and text_f.shape == (3, 64)
    assert torch.allclose(image_f.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.isfinite(image_f @ text_f.T).all()
