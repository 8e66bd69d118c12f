"""Backbones, zero-shot, doctor, `fewclip run` and its errors."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import fewclip
from fewclip.engine.run import RunSpec, run_cell
from fewclip.errors import ConfigError, FewclipError
from fewclip.methods import ClassSet, get_method, resolve_hparams
from fewclip.models.backbone import load_backbone
from fewclip.models.towers import vision_tower_kind

TINY = "fewclip-tiny-vit"


def test_random_init_is_deterministic_and_tiny_models_are_registered():
    a = load_backbone(TINY, "none")
    b = load_backbone(TINY, "none")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a.encode_images(x), b.encode_images(x))
    assert a.sha256 == "random-init-seed0" and a.image_size == 32
    assert vision_tower_kind(TINY) == "vit" and vision_tower_kind("fewclip-tiny-rn") == "resnet"


def test_local_checkpoint_gives_the_same_features(tmp_path):
    import open_clip

    src = load_backbone(TINY, "none")
    with torch.no_grad():
        for p in src.model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # differ from the seed-0 init
    path = tmp_path / "tiny.pt"
    torch.save(src.model.state_dict(), path)
    loaded = load_backbone(TINY, str(path))
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(src.encode_images(x), loaded.encode_images(x), atol=1e-6)
    assert torch.allclose(src.encode_text(["a photo of a cat."]), loaded.encode_text(["a photo of a cat."]), atol=1e-6)
    assert len(loaded.sha256) == 64
    assert open_clip.get_model_config(TINY) is not None


def test_bad_backbones_give_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown backbone 'RN5O'"):
        load_backbone("RN5O", "openai")
    with pytest.raises(ConfigError, match="valid tags"):
        load_backbone("RN50", "no-such-tag")
    with pytest.raises(FewclipError, match="checkpoint file not found"):
        load_backbone(TINY, str(tmp_path / "missing.pt"))
    wrong = tmp_path / "rn.pt"
    torch.save(load_backbone("fewclip-tiny-rn", "none").model.state_dict(), wrong)
    with pytest.raises(FewclipError, match="does not fit backbone"):
        load_backbone(TINY, str(wrong))


def test_weights_not_available_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import open_clip.pretrained as pre

    def offline(*a, **k):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(pre, "download_pretrained_from_url", offline)
    monkeypatch.setattr(pre, "download_pretrained_from_hf", offline)
    with pytest.raises(FewclipError, match="not available offline.*--pretrained"):
        load_backbone("RN50", "openai", cache_dir=str(tmp_path / "cache"))


def test_zeroshot_logits_equal_the_formula():
    torch.manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    w = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    cls = get_method("zeroshot")
    method = cls(resolve_hparams(cls, "oxford_pets", 1, "clean"))
    got = method.logits(f, ClassSet(["a", "b", "c"], w)).numpy()
    expected = 100.0 * f.numpy() @ w.numpy().T
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_zeroshot_run_matches_a_direct_computation(fixture_root, tmp_path):
    """End to end: the run's predictions equal argmax 100·f·Wᵀ computed straight from open_clip."""
    from fewclip.data.datasets import load_dataset
    from fewclip.data.images import load_image
    from fewclip.data.transforms import test_transform

    out = tmp_path / "run"
    m = run_cell(RunSpec(str(fixture_root), "oxford_pets", "zeroshot", TINY, str(out), 1, 1, pretrained="none",
                         features=str(tmp_path / "feat")))
    bb = load_backbone(TINY, "none")
    ds = load_dataset("oxford_pets", fixture_root)
    tf = test_transform(32)
    images = torch.stack([tf(load_image(ds.abspath(it))) for it in ds.test])
    f = bb.encode_images(images)
    w = bb.encode_text([ds.template.format(c) for c in ds.classnames])
    direct = (100.0 * f @ w.T)
    preds = pd.read_parquet(out / "predictions.parquet")
    assert preds["path"].tolist() == [it.path for it in ds.test]
    # features are stored in fp16: compare decisions, and logits within fp16 precision
    assert (preds["pred"].to_numpy() == direct.argmax(1).numpy()).mean() >= 0.9
    assert m["top1"] == pytest.approx(100 * preds["correct"].mean())
    for key in ("protocol", "preset", "backbone", "pretrained", "dataset", "eval_dataset", "method", "shots", "seed",
                "top1", "n_test", "n_classes", "trainable_params", "epochs", "train_seconds", "eval_seconds",
                "peak_mem_mb", "hparams"):
        assert key in m, key
    for key in ("fewclip_version", "git_commit", "config_hash", "manifest_sha256", "backbone_sha256", "torch",
                "open_clip", "device"):
        assert key in m["provenance"], key


def test_imagenet_ensemble_templates_come_from_open_clip():
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    from fewclip.models.templates import class_text_features, prompt_texts

    assert prompt_texts("tench", "ensemble7", "a photo of a {}.") == [t("tench") for t in SIMPLE_IMAGENET_TEMPLATES]
    assert len(prompt_texts("a_b", "openai80", "")) == 80
    assert prompt_texts("golden_retriever", "dataset", "a photo of a {}.") == ["a photo of a golden retriever."]
    bb = load_backbone(TINY, "none")
    w = class_text_features(bb, ["cat", "dog"], "ensemble7", "")
    per = torch.nn.functional.normalize(bb.encode_text(prompt_texts("cat", "ensemble7", "")), dim=-1).mean(0)
    assert torch.allclose(w[0], per / per.norm(), atol=1e-6)


def test_doctor_on_an_empty_directory(tmp_path):
    proc = fewclip("doctor", "--data-root", tmp_path, "--json")
    assert proc.returncode != 0
    report = json.loads(proc.stdout)
    assert len(report) == 15 and all(r["status"] == "missing" for r in report.values())
    assert any(str(tmp_path / "oxford_pets") in p for p in report["oxford_pets"]["problems"])
    assert any("imagenet-adversarial" in p for p in report["imagenet_a"]["problems"])


def test_doctor_ok_on_fixtures(fixture_root):
    proc = fewclip("doctor", "--data-root", fixture_root, "--dataset", "dtd", "--dataset", "imagenet_r", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report) == {"dtd", "imagenet_r"} and report["dtd"]["status"] == "ok"


def test_corrupt_image_is_reported_and_run_leaves_no_metrics(tmp_path):
    from fewclip.data.datasets import load_dataset
    from fewclip.data.fixtures import write_fixture

    write_fixture("dtd", tmp_path / "data")
    ds = load_dataset("dtd", tmp_path / "data")
    bad = ds.abspath(ds.test[0])
    bad.write_bytes(bad.read_bytes()[:40])
    proc = fewclip("doctor", "--data-root", tmp_path / "data", "--dataset", "dtd", "--deep")
    assert proc.returncode != 0 and str(bad) in proc.stdout
    out = tmp_path / "run"
    proc = fewclip("run", "--data-root", tmp_path / "data", "--dataset", "dtd", "--method", "zeroshot",
                   "--backbone", TINY, "--pretrained", "none", "--shots", 1, "--seed", 1, "--out", out,
                   "--features", tmp_path / "feat", "--device", "cpu")
    assert proc.returncode == 2
    assert f"cannot read image {bad}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown method 'nope'; registered methods:"),
    (["--dataset", "mnist"], "unknown dataset"),
    (["--set", "templates=5"], "must be str"),
    (["--set", "lr=1"], "has no hyper-parameter 'lr'"),
])
def test_run_rejects_bad_arguments(fixture_root, tmp_path, args, message):
    base = {"--dataset": "dtd", "--method": "zeroshot"}
    extra = []
    for i in range(0, len(args), 2):
        if args[i] in base:
            base[args[i]] = args[i + 1]
        else:
            extra += args[i : i + 2]
    proc = fewclip("run", "--data-root", fixture_root, *[x for kv in base.items() for x in kv], "--backbone", TINY,
                   "--pretrained", "none", "--shots", 1, "--seed", 1, "--out", tmp_path / "r", "--device", "cpu",
                   "--features", tmp_path / "f", *extra)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_methods_lists_the_registry():
    proc = fewclip("methods", check=True)
    assert "zeroshot" in proc.stdout


# The methods that ship with fewclip: the one hand-written list of them (everything else, the
# workflow included, reads the registry).
BUILTIN_METHODS = {"zeroshot", "linear_probe", "coop", "cocoop", "clip_adapter", "tip_adapter",
                   "tip_adapter_f", "vpt", "vlp", "dpt", "kgcoop", "maple", "promptsrc", "clip_lora", "lpp", "gda"}
IMAGE_ENCODER_METHODS = {"coop", "cocoop", "vpt", "vlp", "dpt", "kgcoop", "maple", "promptsrc", "clip_lora"}  # needs = "images"


def test_builtin_method_names_match_the_registry(monkeypatch):
    from fewclip.methods import REGISTRY, image_methods, load_all

    load_all()
    builtin = {n for n, c in REGISTRY.items() if c.__module__.startswith("fewclip.methods.")}
    assert builtin == BUILTIN_METHODS
    assert set(image_methods()) & BUILTIN_METHODS == IMAGE_ENCODER_METHODS


def test_seeded_transform_draws_as_under_a_global_seed_and_leaves_the_stream_alone():
    """Per-image augmentations seed only the CPU generator (no CUDA seeding call per image)."""
    from PIL import Image

    from fewclip.data.transforms import apply_seeded, train_transform

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    transform = train_transform(32)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = apply_seeded(transform, image, 7)
    assert torch.equal(torch.random.get_rng_state(), before)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        b = transform(image)
    assert torch.equal(a, b)
    assert not torch.equal(a, apply_seeded(transform, image, 8))
