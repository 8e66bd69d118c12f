"""Each model's own preprocessing (issue 28): input size, mean/std, interpolation and resize mode
come from the model (`Backbone.preprocess`, open_clip's `model.visual.preprocess_cfg`), the
transforms give exactly torchvision's and open_clip's tensors for them, the batched uint8 path
stays bit-identical, a local checkpoint gets the preprocessing its model's pretrained tags agree
on, and the feature store records the preprocessing and recomputes a store made with another."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from fewclip.data import transforms as tf
from fewclip.data.transforms import CLIP_MEAN, CLIP_STD, apply_seeded
from fewclip.models.backbone import Backbone, Preprocess, expected_preprocess, load_backbone

TINY = "fewclip-tiny-vit"  # input size 32
BICUBIC, BILINEAR = T.InterpolationMode.BICUBIC, T.InterpolationMode.BILINEAR
HALF = (0.5, 0.5, 0.5)
SQUASH = {"mean": HALF, "std": HALF, "interpolation": "bicubic", "resize_mode": "squash"}  # SigLIP's
LONGEST = {"mean": (0.4, 0.5, 0.6), "std": (0.2, 0.25, 0.3), "interpolation": "bilinear", "resize_mode": "longest"}


def _image(h=23, w=50, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _images():
    return [_image(20 + 9 * i, 47 - 6 * i, seed=i) for i in range(5)]  # wide, square-ish and tall


def _tiny(force=None) -> Backbone:
    """fewclip-tiny-vit as open_clip creates it, with `force_preprocess_cfg` (None: its defaults)."""
    from fewclip.models.backbone import register_package_models

    register_package_models()
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(TINY, force_preprocess_cfg=force)
    return Backbone(model.eval(), TINY, "none", "test", open_clip.get_tokenizer(TINY), torch.device("cpu"))


def _open_clip_transform(model):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)


def test_a_squash_model_gives_torchvision_resize_to_a_square_and_its_mean_std():
    bb = _tiny(SQUASH)
    pre = bb.preprocess
    assert pre == Preprocess(32, HALF, HALF, "bicubic", "squash")
    img = _image()  # 50 x 23: squashing and cropping differ
    got = tf.test_transform(pre)(img)
    want = T.Compose([T.Resize((32, 32), interpolation=BICUBIC), T.ToTensor(), T.Normalize(HALF, HALF)])(img)
    assert got.shape == (3, 32, 32) and torch.equal(got, want)
    assert torch.equal(got, _open_clip_transform(bb.model)(img))
    assert not torch.allclose(got, tf.test_transform(32)(img), atol=0.1)  # CLIP's: another crop and mean/std


def test_a_shortest_model_gives_resize_and_center_crop_with_clip_mean_std():
    bb = _tiny()
    pre = bb.preprocess
    assert pre == Preprocess(32, CLIP_MEAN, CLIP_STD, "bicubic", "shortest")
    img = _image()
    got = tf.test_transform(pre)(img)
    want = T.Compose([T.Resize(32, interpolation=BICUBIC), T.CenterCrop(32), T.ToTensor(),
                      T.Normalize(CLIP_MEAN, CLIP_STD)])(img)
    assert got.shape == (3, 32, 32) and torch.equal(got, want)
    assert torch.equal(got, _open_clip_transform(bb.model)(img))
    assert torch.equal(got, tf.test_transform(32)(img))  # a bare size: CLIP's, as before


@pytest.mark.parametrize("cfg", [LONGEST, {**LONGEST, "resize_mode": "shortest"},
                                 {**SQUASH, "interpolation": "bilinear"}])
def test_other_modes_and_interpolations_give_open_clip_s_tensors(cfg):
    bb = _tiny(cfg)
    pre = bb.preprocess
    assert (pre.resize_mode, pre.interpolation, pre.mean) == (cfg["resize_mode"], cfg["interpolation"], cfg["mean"])
    reference = _open_clip_transform(bb.model)
    for img in _images():
        assert torch.equal(tf.test_transform(pre)(img), reference(img))
    bicubic = Preprocess(32, pre.mean, pre.std, "bicubic", pre.resize_mode)
    assert not torch.equal(tf.test_transform(pre)(_image()), tf.test_transform(bicubic)(_image()))


def test_the_train_transform_keeps_its_crop_with_the_model_s_interpolation_and_mean_std():
    pre = Preprocess(32, HALF, (0.25, 0.25, 0.25), "bilinear", "squash")
    img = _image()
    for seed in range(3):
        got = apply_seeded(tf.view_transform(pre), img, seed)
        want = apply_seeded(T.Compose([
            T.RandomResizedCrop(32, scale=(0.5, 1.0), interpolation=BILINEAR), T.RandomHorizontalFlip(),
            T.ToTensor(), T.Normalize(HALF, (0.25, 0.25, 0.25))]), img, seed)
        assert torch.equal(got, want)
    clip = apply_seeded(T.Compose([T.RandomResizedCrop(32, scale=(0.08, 1.0), interpolation=BICUBIC),
                                   T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)]), img, 7)
    assert torch.equal(apply_seeded(tf.train_transform(32), img, 7), clip)  # the default is unchanged


@pytest.mark.parametrize("cfg", [SQUASH, {}, LONGEST], ids=["squash", "shortest-clip", "longest"])
@pytest.mark.parametrize("kind", ["test", "train", "view"])
def test_the_batched_uint8_path_equals_the_per_image_path_bit_for_bit(cfg, kind):
    pre = Preprocess.from_cfg(cfg, 32)
    make = {"test": lambda b: tf.test_transform(pre, batched=b),
            "train": lambda b: tf.train_transform(pre, batched=b),
            "view": lambda b: tf.view_transform(pre, batched=b)}[kind]
    imgs = _images()
    per_image = torch.stack([apply_seeded(make(False), im, 10 + i) for i, im in enumerate(imgs)])
    batch = [(apply_seeded(make(True), im, 10 + i), i) for i, im in enumerate(imgs)]
    assert batch[0][0].dtype == torch.uint8
    x, labels = functools.partial(tf.collate_normalized, preprocess=pre)(batch)
    assert x.dtype == torch.float32 and torch.equal(x, per_image) and labels.tolist() == list(range(5))
    if cfg:  # CLIP's mean/std (the default) would give other values
        assert not torch.equal(tf.collate_normalized(batch)[0], per_image)


def test_image_loaders_use_the_backbone_s_preprocessing(tmp_path):
    """engine.inputs.ImageSet: the image methods' test loader (and the train loader's collate)."""
    from fewclip.data.datasets import load_dataset
    from fewclip.data.fixtures import write_fixture
    from fewclip.data.images import load_image
    from fewclip.engine.inputs import ImageSet

    write_fixture("dtd", tmp_path, n_classes=2, n_train=1, n_val=1, n_test=2, image_size=40)
    ds = load_dataset("dtd", tmp_path)
    pre = Preprocess.from_cfg(SQUASH, 24)
    images, _ = next(iter(ImageSet(ds, list(ds.test), 32, 0, pre).loader()))
    want = torch.stack([tf.test_transform(pre)(load_image(ds.abspath(it))) for it in ds.test])
    assert images.shape == (len(ds.test), 3, 24, 24) and torch.equal(images, want)


def test_a_model_without_preprocess_cfg_falls_back_to_clip_s_and_as_dict_round_trips():
    bb = _tiny(SQUASH)
    del bb.model.visual.preprocess_cfg
    assert bb.preprocess == Preprocess(32, CLIP_MEAN, CLIP_STD, "bicubic", "shortest")
    pre = Preprocess.from_cfg({**SQUASH, "mean": [0.5, 0.5, 0.5]}, [48, 48])
    assert pre.size == 48 and pre.mean == HALF and json.loads(json.dumps(pre.as_dict())) == pre.as_dict()
    assert Preprocess(**pre.as_dict()) == pre
    from fewclip.errors import ConfigError

    with pytest.raises(ConfigError, match="resize_mode"):
        Preprocess(32, HALF, HALF, "bicubic", "crop")


def test_pretraining_normalises_with_the_model_s_mean_std():
    from fewclip.models.pretrain import _to_tensor

    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    pre = Preprocess.from_cfg(SQUASH, 8)
    want = tf.normalize_batch(torch.from_numpy(pixels).permute(0, 3, 1, 2), pre)
    assert torch.equal(_to_tensor(pixels, pre), want)
    assert torch.equal(_to_tensor(pixels, Preprocess.from_cfg({}, 8)),
                       tf.normalize_batch(torch.from_numpy(pixels).permute(0, 3, 1, 2)))


def test_open_clip_s_real_tags_name_each_model_s_preprocessing():
    """Without creating anything: a local file of a real model gets what its tags agree on."""
    from fewclip.models.backbone import agreed_tag_preprocess

    siglip = Preprocess(224, HALF, HALF, "bicubic", "squash")
    assert expected_preprocess("ViT-B-16-SigLIP", "webli") == siglip
    assert expected_preprocess("ViT-B-16-SigLIP", "/nowhere/siglip.pt") == siglip
    assert agreed_tag_preprocess("ViT-B-16-SigLIP")["resize_mode"] == "squash"
    assert expected_preprocess("ViT-B-16", "/nowhere/b16.pt") == Preprocess(224, CLIP_MEAN, CLIP_STD)
    assert expected_preprocess("ViT-B-16", "openai") == Preprocess(224, CLIP_MEAN, CLIP_STD)


def test_a_local_checkpoint_gets_the_preprocessing_its_model_s_tags_agree_on(tmp_path, monkeypatch):
    """A real-model stand-in: fewclip-tiny-vit's architecture registered with open_clip under a
    name of its own, with two SigLIP-style tags that disagree only on the interpolation."""
    import open_clip
    import open_clip.factory as factory
    import open_clip.pretrained as pretrained

    from fewclip.models.backbone import agreed_tag_preprocess, register_package_models

    register_package_models()
    name = "ViT-Tiny-Test-Squash"  # no "siglip" in it: open_clip would pick SigLIP's tokenizer by name
    monkeypatch.setitem(factory._MODEL_CONFIGS, name, open_clip.get_model_config(TINY))
    monkeypatch.setitem(pretrained._PRETRAINED, name, {
        "webli": pretrained._slpcfg(hf_hub="nowhere/a/"),
        "other": pretrained._slpcfg(hf_hub="nowhere/b/", interpolation="bilinear"),
    })
    assert agreed_tag_preprocess(name) == {"mean": HALF, "std": HALF, "resize_mode": "squash"}
    ckpt = tmp_path / "siglip_like.pt"
    torch.save(open_clip.create_model(name).state_dict(), ckpt)
    bb = load_backbone(name, str(ckpt))
    want = Preprocess(32, HALF, HALF, "bicubic", "squash")  # interpolation: the tags disagree, the default
    assert bb.preprocess == want and expected_preprocess(name, str(ckpt)) == want
    assert load_backbone(name, "none").preprocess == Preprocess(32, CLIP_MEAN, CLIP_STD)  # no weights: defaults


@pytest.fixture
def data(tmp_path):
    from fewclip.data.fixtures import write_fixture

    root = tmp_path / "data"
    write_fixture("dtd", root, n_classes=3, n_train=2, n_val=1, n_test=2, image_size=40)
    return root


def _store(root, data_root, backbone=None):
    from fewclip.data.datasets import load_dataset
    from fewclip.engine.features import FeatureStore

    ds = load_dataset("dtd", data_root)
    return FeatureStore(root, ds, backbone or (lambda: load_backbone(TINY, "none", "cpu")),
                        model=TINY, pretrained="none"), ds


def _with_preprocess_cfg(monkeypatch, cfg):
    """fewclip-tiny-vit's config file as if it held a `preprocess_cfg` key (as the tiny families do)."""
    from fewclip.models import backbone

    real = backbone._package_config
    monkeypatch.setattr(backbone, "_package_config",
                        lambda name: {**real(name), "preprocess_cfg": cfg} if name == TINY else real(name))


def test_the_store_records_the_preprocessing_and_recomputes_a_store_of_another(tmp_path, data, monkeypatch,
                                                                              capsys, one_torch_thread):
    store, ds = _store(tmp_path / "s", data)
    first = store.test().raw
    store.write_manifest()
    meta = json.loads((tmp_path / "s" / "store.json").read_text())
    clip = Preprocess(32, CLIP_MEAN, CLIP_STD).as_dict()
    assert meta["preprocess"] == clip == meta["source"]["preprocess"]["model"] == store.backbone.preprocess.as_dict()

    _with_preprocess_cfg(monkeypatch, {k: list(v) if isinstance(v, tuple) else v for k, v in SQUASH.items()})
    again, ds = _store(tmp_path / "s", data)
    second = again.test().raw
    assert again.recomputed == ["test.pt"] and again.images_encoded == len(ds.test)
    assert "preprocess" in capsys.readouterr().err
    assert again.backbone.preprocess == Preprocess(32, HALF, HALF, "bicubic", "squash")
    assert not torch.allclose(first, second, atol=1e-3)
    again.write_manifest()
    assert json.loads((tmp_path / "s" / "store.json").read_text())["preprocess"]["resize_mode"] == "squash"
    third, _ = _store(tmp_path / "s", data)  # the same preprocessing again: reused
    third.test()
    assert third.recomputed == [] and third.images_encoded == 0


def test_a_backbone_whose_preprocessing_differs_from_the_expected_one_is_refused(tmp_path, data, one_torch_thread):
    from fewclip.errors import FewclipError

    store, ds = _store(tmp_path / "s", data, backbone=lambda: _tiny(SQUASH))
    with pytest.raises(FewclipError, match="preprocesses images"):
        store.test()
    assert store.images_encoded == 0 and not (tmp_path / "s" / "test.pt").exists()


def test_the_tiny_siglip_family_squashes_with_mean_std_one_half():
    want = Preprocess(32, HALF, HALF, "bicubic", "squash")
    assert expected_preprocess("fewclip-tiny-siglip", "none") == want
    bb = load_backbone("fewclip-tiny-siglip", "none")
    assert bb.preprocess == want and bb.model.visual.preprocess_cfg["resize_mode"] == "squash"
