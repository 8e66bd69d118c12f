"""The image path without repeated work. Decoded images are kept per process
(bounded), and ToTensor + Normalize run once per batch: both give exactly what the per-image
torchvision pipeline gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fewclip.data import images as images_mod
from fewclip.data import transforms as tf
from fewclip.data.transforms import apply_seeded, collate_normalized


def _photos(tmp_path, n=6):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = 20 + 7 * i, 41 - 3 * i  # several sizes and aspect ratios
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("make", [
    lambda b: tf.test_transform(24, batched=b),
    lambda b: tf.train_transform(24, batched=b),
    lambda b: tf.train_transform(24, scale=(0.5, 1.0), batched=b),
    lambda b: tf.view_transform(24, batched=b),
])
def test_a_batched_transform_gives_the_per_image_pipeline_bit_for_bit(tmp_path, make):
    imgs = [images_mod.load_image(p) for p in _photos(tmp_path)]
    per_image = torch.stack([apply_seeded(make(False), im, 10 + i) for i, im in enumerate(imgs)])
    batch = [(apply_seeded(make(True), im, 10 + i), i) for i, im in enumerate(imgs)]
    assert batch[0][0].dtype == torch.uint8
    x, labels = collate_normalized(batch)
    assert x.dtype == torch.float32 and torch.equal(x, per_image)
    assert labels.tolist() == list(range(len(imgs)))


def test_decoded_images_are_kept_up_to_the_budget(tmp_path, monkeypatch):
    paths = _photos(tmp_path, 3)
    monkeypatch.setattr(images_mod, "_cache", {})
    monkeypatch.setattr(images_mod, "_cached_bytes", 0)
    first = paths[0]
    size = np.asarray(images_mod.load_image(first)).size
    monkeypatch.setattr(images_mod, "CACHE_BYTES", size)  # room for the first image only
    a = images_mod.load_image_cached(first)
    assert images_mod.load_image_cached(first) is a  # decoded once
    assert np.array_equal(np.asarray(a), np.asarray(images_mod.load_image(first)))
    b = images_mod.load_image_cached(paths[1])
    assert images_mod.load_image_cached(paths[1]) is not b  # no room: decoded again, never evicting
    assert set(images_mod._cache) == {str(first)} and images_mod._cached_bytes == size
    images_mod.clear_image_cache()  # what a fresh process starts with
    assert images_mod._cache == {} and images_mod._cached_bytes == 0 and images_mod.load_image_cached(first) is not a


def test_a_cached_image_survives_the_transforms_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(images_mod, "_cache", {})
    monkeypatch.setattr(images_mod, "_cached_bytes", 0)
    path = _photos(tmp_path, 1)[0]
    img = images_mod.load_image_cached(path)
    before = np.asarray(img).copy()
    for seed in range(5):
        apply_seeded(tf.train_transform(16, batched=True), img, seed)
        tf.test_transform(16, batched=True)(img)
    assert np.array_equal(np.asarray(images_mod.load_image_cached(path)), before)


def test_a_bad_file_is_still_named_through_the_cache(tmp_path):
    from fewclip.errors import DataError

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(DataError, match="broken.png"):
        images_mod.load_image_cached(bad)
