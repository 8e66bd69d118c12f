"""Backbones as the papers used them: OpenAI weights with QuickGELU on every path, and the
official features of the reference CLIP through fewclip's own loader."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import official_ref as R


def _activations(model):
    from open_clip.transformer import QuickGELU

    quick = sum(isinstance(m, QuickGELU) for m in model.modules())
    gelu = sum(isinstance(m, nn.GELU) for m in model.modules())
    return quick, gelu


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """open_clip's real `openai` path without the network: the download returns a local file and
    the checkpoint load is skipped, so the model built is the architecture open_clip's own code
    path builds for the tag (with whatever activation fewclip asked for)."""
    import open_clip.factory as factory

    fake = tmp_path / "weights.pt"
    fake.write_bytes(b"not read")
    asked = {}

    def download(cfg, cache_dir=None):
        asked["cfg"] = cfg
        return str(fake)

    monkeypatch.setattr(factory, "download_pretrained", download)
    monkeypatch.setattr(factory, "load_checkpoint", lambda *a, **k: None)
    return asked


@pytest.mark.parametrize("name", ["RN50", "ViT-B-16", "ViT-B-32"])
def test_openai_tag_builds_quickgelu_towers(no_download, name):
    import warnings

    from fewclip.models.backbone import load_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # open_clip's "QuickGELU mismatch" warning would fail here
        bb = load_backbone(name, "openai", "cpu")
    quick, gelu = _activations(bb.model)
    assert gelu == 0 and quick > 0, (name, quick, gelu)
    assert "openai" in no_download["cfg"].get("url", "") or no_download["cfg"].get("hf_hub")


def test_a_tag_trained_with_quickgelu_gets_it_and_a_gelu_tag_keeps_gelu(no_download):
    import open_clip

    from fewclip.models.backbone import load_backbone, needs_quick_gelu

    quick_tags = [t for m, t in open_clip.list_pretrained()
                  if m == "ViT-B-32" and t != "openai" and open_clip.get_pretrained_cfg(m, t).get("quick_gelu")]
    gelu_tags = [t for m, t in open_clip.list_pretrained()
                 if m == "ViT-B-32" and not open_clip.get_pretrained_cfg(m, t).get("quick_gelu")]
    assert quick_tags and gelu_tags
    assert _activations(load_backbone("ViT-B-32", quick_tags[0], "cpu").model)[1] == 0
    assert _activations(load_backbone("ViT-B-32", gelu_tags[0], "cpu").model)[0] == 0
    assert needs_quick_gelu("ViT-B-16", "/some/ViT-B-16.pt") and not needs_quick_gelu("ViT-B-16", "none")


def test_local_openai_checkpoint_of_an_openai_architecture_gets_quickgelu(monkeypatch, tmp_path):
    import open_clip.factory as factory

    from fewclip.models.backbone import load_backbone

    monkeypatch.setattr(factory, "load_checkpoint", lambda *a, **k: None)
    path = tmp_path / "ViT-B-32.pt"
    path.write_bytes(b"x")
    quick, gelu = _activations(load_backbone("ViT-B-32", str(path), "cpu").model)
    assert gelu == 0 and quick > 0


@pytest.mark.parametrize("kind,prefix", [("vit", ""), ("rn", "rn_")])
def test_reference_clip_through_fewclip_gives_the_official_features(kind, prefix):
    z = R.ref("zeroshot")
    bb = R.backbone(kind)
    with torch.no_grad():
        raw = bb.model.encode_image(z["images"])
    R.close(raw, z[f"{prefix}image_features_raw"], 1e-5)
    R.close(bb.encode_images(z["images"]), z[f"{prefix}image_features"], 1e-5)
    texts = [z["template"].format(n.replace("_", " ")) for n in z["class_names"]]
    assert torch.equal(bb.tokenizer(texts).long(), z["tokens_dataset"])
    R.close(bb.encode_text(texts), z[f"{prefix}text_features_dataset"], 1e-5)
    logits = 100.0 * bb.encode_images(z["images"]) @ bb.encode_text(texts).t()
    R.close(logits, z[f"{prefix}logits_dataset"], 1e-4)


def test_the_same_weights_with_gelu_give_other_features():
    """The check above can fail: GELU towers on the reference weights are off by far more than 1e-5."""
    import open_clip

    from fewclip.models.backbone import register_package_models

    register_package_models()
    z = R.ref("zeroshot")
    model = open_clip.create_model("fewclip-ref-vit", pretrained=str(R.checkpoint("vit")), quick_gelu=False)
    model.eval()
    assert _activations(model)[1] > 0
    with torch.no_grad():
        raw = model.encode_image(z["images"])
    assert (raw - z["image_features_raw"]).abs().max() > 1e-3
