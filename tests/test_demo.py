"""The embedded demo world and its micro-CLIP: layouts, determinism, and learnability targets."""

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewclip.data import demo
from fewclip.data.datasets import DATASETS, DEMO_DATASETS, BENCHMARK_DATASETS, load_dataset
from fewclip.errors import ConfigError
from fewclip.methods._tip import TIP_CONFIG

SOURCE = "demo_shapes"
TARGETS = ("demo_shapes_v2", "demo_shapes_sketch", "demo_shapes_a", "demo_shapes_r")


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_world")
    demo.write_demo_world(root, seed=0)
    return root


@pytest.fixture(scope="module")
def micro_clip(tmp_path_factory):
    """The real demo checkpoint (default steps), pretrained once for this module."""
    from fewclip.models.pretrain import pretrain_micro_clip

    path = tmp_path_factory.mktemp("ckpt") / "micro_clip.pt"
    summary = pretrain_micro_clip(path, seed=0, log=lambda m: None)
    return path, summary


def test_registry_keeps_paper_datasets_first():
    assert list(DATASETS)[: len(BENCHMARK_DATASETS)] == list(BENCHMARK_DATASETS)
    assert len(BENCHMARK_DATASETS) == 15
    assert set(DEMO_DATASETS) == {SOURCE, "demo_textures", "demo_scenes", *TARGETS}
    for name in DEMO_DATASETS:
        spec = DATASETS[name]
        assert "fewclip generate demo" in spec.source
        assert (name in TIP_CONFIG) != (name in TARGETS)  # Tip-Adapter's per-dataset values: sources only


def test_world_is_read_by_the_real_readers(world):
    kinds = {name: DATASETS[name].kind for name in DEMO_DATASETS}
    assert kinds == {"demo_shapes": "imagenet", "demo_textures": "split_json", "demo_scenes": "split_json",
                     "demo_shapes_v2": "imagenet_v2", "demo_shapes_sketch": "imagenet_wnid",
                     "demo_shapes_a": "imagenet_subset", "demo_shapes_r": "imagenet_subset"}
    source = load_dataset(SOURCE, world)
    assert source.classnames == demo.shape_classnames()
    assert "red circle" in source.classnames
    for name in DEMO_DATASETS:
        ds = load_dataset(name, world)
        n = len(ds.classnames)
        assert n >= 6
        if ds.train:
            counts = np.bincount([it.label for it in ds.train], minlength=n)
            assert counts.min() >= 16, name  # 16 shots are possible for every class
        test_counts = np.bincount([it.label for it in ds.test], minlength=n)
        assert test_counts.min() >= 20, name
        if name in ("demo_shapes_a", "demo_shapes_r"):
            assert n < len(source.classnames)
            assert ds.imagenet_index == sorted(ds.imagenet_index)
            assert [source.classnames[i] for i in ds.imagenet_index] == ds.classnames
        elif name in TARGETS:
            assert ds.classnames == source.classnames
        with Image.open(ds.abspath(ds.test[0])) as img:
            assert img.size == (demo.SIZE, demo.SIZE) and img.mode == "RGB"
    textures = load_dataset("demo_textures", world)
    assert textures.template == "{} texture." and "striped" in textures.classnames
    assert "snowy field" in load_dataset("demo_scenes", world).classnames


def test_sketch_is_nearly_grey(world):
    """Pencil drawings: only a faint trace of the class colour on the outline."""
    ds = load_dataset("demo_shapes_sketch", world)
    for item in ds.test[::25]:
        arr = np.asarray(Image.open(ds.abspath(item))).astype(int)
        spread = arr.max(axis=2) - arr.min(axis=2)
        assert spread.max() <= 16 and spread.mean() < 2, item.path


def test_world_is_deterministic(world, tmp_path):
    demo.write_demo_world(tmp_path / "again", seed=0)
    assert tree_hash(tmp_path / "again") == tree_hash(world)
    demo.write_demo_world(tmp_path / "other", seed=1)
    assert tree_hash(tmp_path / "other") != tree_hash(world)


def test_pretraining_pairs_are_disjoint_from_the_world(world):
    source = load_dataset(SOURCE, world)
    world_hashes = {hashlib.sha256(np.asarray(Image.open(source.abspath(it))).tobytes()).digest()
                    for it in source.train + source.test}
    pairs = [demo.pretrain_pair(0, i) for i in range(300)]
    assert not world_hashes & {hashlib.sha256(img.tobytes()).digest() for img, _ in pairs}
    captions = [c for _, c in pairs]
    assert len(set(captions)) > 100
    vocab = " ".join(captions)
    for word in ("circle", "striped", "beach", "sketch", "red"):
        assert word in vocab


def _state(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def test_pretraining_is_deterministic(tmp_path):
    import torch

    from fewclip.models.pretrain import pretrain_micro_clip

    kw = dict(seed=3, steps=6, batch_size=16, pool_size=64, log=lambda m: None)
    a = pretrain_micro_clip(tmp_path / "a.pt", **kw)
    pretrain_micro_clip(tmp_path / "b.pt", **kw)
    sa, sb = _state(tmp_path / "a.pt"), _state(tmp_path / "b.pt")
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert np.isfinite(a["final_loss"])
    pretrain_micro_clip(tmp_path / "c.pt", **{**kw, "seed": 4})
    sc = _state(tmp_path / "c.pt")
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_pretrain_demo_verb(tmp_path, capsys):
    from fewclip.cli import data as data_verbs

    parser = argparse.ArgumentParser()
    data_verbs.register(parser.add_subparsers(dest="verb"))
    out = tmp_path / "sub" / "ckpt.pt"
    args = parser.parse_args(["pretrain-demo", "--out", str(out), "--steps", "2", "--batch-size", "8"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    summary = json.loads(text[text.index("{\n"):])
    assert out.is_file() and summary["steps"] == 2 and summary["batch_size"] == 8
    bad = parser.parse_args(["pretrain-demo", "--out", str(out), "--steps", "0"])
    with pytest.raises(ConfigError, match="--steps"):
        bad.func(bad)


def test_micro_clip_zero_shot_targets(world, micro_clip):
    """Loaded through the normal local-checkpoint path: informative but imperfect features,
    >= 2x chance everywhere, and every DG target below the source."""
    from fewclip.models.backbone import load_backbone
    from fewclip.models.pretrain import MODEL, zero_shot_accuracy

    path, summary = micro_clip
    backbone = load_backbone(MODEL, str(path))
    assert backbone.pretrained == str(path) and len(backbone.sha256) == 64
    acc = {name: zero_shot_accuracy(backbone, world, name) for name in DEMO_DATASETS}
    for name, top1 in acc.items():
        chance = 100.0 / len(load_dataset(name, world).classnames)
        assert top1 >= 2 * chance, (name, top1, acc)
    assert 30.0 <= acc[SOURCE] <= 90.0, acc
    for name in TARGETS:
        assert acc[name] < acc[SOURCE], (name, acc)


def _features(backbone, ds, items):
    import torch

    from fewclip.data.images import load_image
    from fewclip.data.transforms import test_transform

    tf = test_transform(backbone.image_size)
    with torch.no_grad():
        x = backbone.encode_images(torch.stack([tf(load_image(ds.abspath(it))) for it in items]))
    return x.numpy(), np.array([it.label for it in items])


@pytest.mark.parametrize("name", [SOURCE, "demo_textures"])
def test_images_carry_more_than_their_class_names(world, micro_clip, name):
    """What the few-shot methods can learn (habitats, palettes, the source's camera): a 16-shot
    linear probe on the micro-CLIP's features, C searched on 4 held-out shots per class as the
    method does, beats the zero-shot classifier by a clear margin."""
    from fewclip.methods.linear_probe import accuracy, search_c
    from fewclip.models.backbone import load_backbone
    from fewclip.models.pretrain import MODEL, zero_shot_accuracy

    backbone = load_backbone(MODEL, str(micro_clip[0]))
    ds = load_dataset(name, world)
    x, y = _features(backbone, ds, ds.train)
    rank = np.array([np.sum(y[:i] == y[i]) for i in range(len(y))])  # index of the image within its class
    train, val = rank < 16, (rank >= 16) & (rank < 20)
    assert np.bincount(y[train]).min() == 16 and np.bincount(y[val]).min() == 4
    probe = search_c(x[train], y[train], x[val], y[val], seed=1)
    xt, yt = _features(backbone, ds, ds.test)
    linear_probe = 100.0 * accuracy(probe["clf"], xt, yt)
    zero_shot = zero_shot_accuracy(backbone, world, name)
    assert linear_probe >= zero_shot + 10.0, (name, linear_probe, zero_shot)


def test_the_source_camera_is_a_colour_cast(world):
    """demo_shapes photos are blue-starved (CAMERA_CAST); the pretraining photos are not."""
    source = load_dataset(SOURCE, world)
    src = np.stack([np.asarray(Image.open(source.abspath(it))) for it in source.test[::10]]).astype(float)
    pre = np.stack([demo.pretrain_pair(0, i)[0] for i in range(40)]).astype(float)
    ratio = lambda a: a[..., 2].mean() / a[..., 0].mean()  # noqa: E731  (blue over red)
    assert ratio(src) < 0.75 * ratio(pre)
    assert np.array_equal(demo.camera(np.full((1, 1, 3), 200, np.uint8))[0, 0], [200, 170, 120])
