"""Image decoding: every file becomes an 8-bit RGB PIL image, or a DataError naming the file.

`load_image_cached` keeps decoded images for the rest of the process, up to CACHE_BYTES: a
batched job trains several methods × cells × epochs on the same few-shot and test images. Once
the budget is full nothing more is added (no eviction, so a scan over a larger set costs no
more than without a cache). DataLoader workers each fill their own copy."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ..errors import DataError

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
CACHE_BYTES = 1 << 30  # 1 GiB: every demo or fixture image, or ~3,500 decoded ImageNet photos
_cache: dict[str, Image.Image] = {}
_cached_bytes = 0


def load_image(path: str | os.PathLike) -> Image.Image:
    """Fully decode `path` (so truncation is detected) and return it as RGB.

    Alpha is dropped as CLIP's own `convert("RGB")` does; palette images go through RGBA so
    their transparency is handled; 16/32-bit integer greyscale is scaled (not clipped) to 8 bits.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except _DECODE_ERRORS as err:
        reason = str(err) or type(err).__name__
        raise DataError(
            f"cannot read image {path}: {reason}; re-copy the file or remove it from the split"
        ) from err


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img.copy()
    if img.mode.startswith("I"):  # I;16, I;16B, I;16L, I (16-bit PNGs may open as I)
        arr = np.asarray(img).astype(np.float64)
        arr = np.clip(np.rint(arr * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")  # uint8 2-D -> L
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return img.convert("RGB")


def load_image_cached(path: str | os.PathLike) -> Image.Image:
    """`load_image(path)`, decoded once per process while the cache has room. The transforms
    never modify their input image, so one decoded copy serves every later read."""
    global _cached_bytes
    key = os.fspath(path)
    image = _cache.get(key)
    if image is None:
        image = load_image(key)
        size = image.width * image.height * len(image.getbands())
        if _cached_bytes + size <= CACHE_BYTES:
            _cache[key] = image
            _cached_bytes += size
    return image


def clear_image_cache() -> None:
    """Forget every decoded image (what a fresh process starts with)."""
    global _cached_bytes
    _cache.clear()
    _cached_bytes = 0


class ImageItems:
    """A torch map-style dataset: (transform(image), label) of `items` of `dataset`, in order.

    `seed_of(i, item)` gives the seed of image i's random augmentation (None, or no `seed_of`:
    the transform runs unseeded, for deterministic test transforms)."""

    def __init__(self, dataset, items, transform, seed_of=None):
        self.dataset, self.items, self.transform, self.seed_of = dataset, items, transform, seed_of

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from .transforms import apply_seeded

        item = self.items[i]
        image = load_image_cached(self.dataset.abspath(item))
        seed = None if self.seed_of is None else self.seed_of(i, item)
        return (self.transform(image) if seed is None else apply_seeded(self.transform, image, seed)), item.label
