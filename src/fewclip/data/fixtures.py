"""Tiny, exact replicas of the 15 datasets' on-disk layouts, for tests and smoke runs.

Images are small, deterministic (same seed -> same bytes) and cycle through the formats and
modes the loaders must handle (RGB/L/CMYK JPEG; RGB/RGBA/P+transparency/LA/16-bit PNG). Each
class has its own base colour, so a model can learn something from them.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import write_json
from .datasets import BENCHMARK_DATASETS, DATASETS, get_spec

# (mode, format): the cycle of image variants written by the fixtures.
_VARIANTS = [
    ("RGB", "JPEG"), ("RGB", "PNG"), ("L", "JPEG"), ("RGBA", "PNG"),
    ("P", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG"), ("LA", "PNG"),
]

# Raw class names as the real split files spell them (underscores where the real ones have them).
_NAMES = {
    "caltech101": ["face", "leopard", "motorbike", "accordion", "airplane", "crocodile_head"],
    "oxford_pets": ["abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound",
                    "beagle", "bengal"],
    "stanford_cars": ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan",
                      "2008 Acura TL Type-S", "2012 Acura TSX Sedan", "2001 Acura Integra Type R"],
    "oxford_flowers": ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
                       "english marigold", "tiger lily"],
    "food101": ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad"],
    "fgvc_aircraft": ["707-320", "727-200", "A300B4", "Cessna 172", "F-16A/B", "DHC-1"],
    "sun397": ["abbey", "airplane_cabin", "airport_terminal", "alley", "amphitheater", "amusement_arcade"],
    "dtd": ["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered"],
    "eurosat": ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road",
                "Industrial Buildings", "Pasture Land"],
    "ucf101": ["Apply_Eye_Makeup", "Apply_Lipstick", "Archery", "Baby_Crawling", "Balance_Beam",
               "Band_Marching"],
}
_IMAGENET = [
    ("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"), ("n01494475", "hammerhead shark"), ("n01496331", "electric ray"),
    ("n01498041", "stingray"), ("n01514668", "rooster"),
]


def _class_names(name: str, n: int) -> list[str]:
    pool = _NAMES[name]
    return [pool[i] if i < len(pool) else f"extra_class_{i}" for i in range(n)]


def _imagenet_classes(n: int) -> list[tuple[str, str]]:
    return [_IMAGENET[i] if i < len(_IMAGENET) else (f"n{99000000 + i:08d}", f"extra class {i}")
            for i in range(n)]


# Relative image path (without extension) inside the split file's image dir, per dataset.
def _split_stem(name: str, cname: str, label: int, idx: int, split: str) -> str:
    dirname = "".join(c for c in cname if c.isalnum() or c == "_")
    return {
        "caltech101": f"{dirname}/image_{idx:04d}",
        "oxford_pets": f"{cname.lower()}_{idx}",
        "stanford_cars": f"{'cars_test' if split == 'test' else 'cars_train'}/{idx:05d}",
        "oxford_flowers": f"image_{idx:05d}",
        "food101": f"{dirname}/{1000000 + idx}",
        "sun397": f"{dirname[0]}/{dirname}/sun_{idx:08d}",
        "dtd": f"{dirname}/{dirname}_{idx:04d}",
        "eurosat": f"{dirname}/{dirname}_{idx}",
        "ucf101": f"{dirname}/v_{dirname.replace('_', '')}_g{idx:02d}_c01",
    }[name]


class _Writer:
    """Writes the deterministic images of one fixture; `counter` numbers them."""

    def __init__(self, name: str, n_classes: int, image_size: int, seed: int):
        self.size = image_size
        self.seed = [seed, sorted(DATASETS).index(name)]
        self.colours = np.random.default_rng(self.seed + [1 << 20]).integers(0, 256, (n_classes, 3))
        self.counter = 0

    def write(self, stem: Path, label: int, jpeg_ext: str = ".jpg", force_ext: str | None = None) -> Path:
        mode, fmt = _VARIANTS[self.counter % len(_VARIANTS)]
        rng = np.random.default_rng(self.seed + [self.counter])
        self.counter += 1
        noise = rng.integers(0, 256, (self.size, self.size, 3))
        rgb = (0.7 * self.colours[label] + 0.3 * noise).astype(np.uint8)
        path = stem.with_name(stem.name + (force_ext or (jpeg_ext if fmt == "JPEG" else ".png")))
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        _encode(rgb, mode).save(buf, fmt, **({"transparency": 0} if mode == "P" else {}))
        path.write_bytes(buf.getvalue())
        return path


def _encode(rgb: np.ndarray, mode: str) -> Image.Image:
    img = Image.fromarray(rgb)
    if mode == "I;16":
        grey = np.asarray(img.convert("L")).astype(np.uint16) * 257
        return Image.fromarray(grey)  # uint16 2-D -> I;16
    if mode == "P":
        return img.quantize(colors=16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    if mode == "RGBA":
        rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
        return Image.fromarray(rgba)
    return img.convert(mode)


def _shuffled(rows: list, seed: list[int]) -> list:
    rows = list(rows)
    random.Random(str(seed)).shuffle(rows)
    return rows


def write_fixture(name: str, root, n_classes: int = 4, n_train: int = 3, n_val: int = 2,
                  n_test: int = 3, image_size: int = 32, seed: int = 0) -> None:
    """Write a tiny replica of `name`'s on-disk layout under `root` (the data root)."""
    spec = get_spec(name)
    if n_classes < 2:
        raise ValueError("fixtures need n_classes >= 2 (ImageNet-A/-R use a strict subset)")
    root = Path(root)
    base = root / spec.folder
    writer = _Writer(name, n_classes, image_size, seed)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    if spec.kind == "split_json":
        _write_split_json(spec, base, writer, n_classes, counts)
    elif spec.kind == "fgvc":
        _write_fgvc(spec, base, writer, n_classes, counts)
    else:
        _write_imagenet_family(spec, base, writer, n_classes, n_train, n_test)


def write_all_fixtures(root, **kw) -> None:
    """Replicas of the 15 benchmark datasets (the generated demo datasets are not replicas)."""
    for name in BENCHMARK_DATASETS:
        write_fixture(name, root, **kw)


def _write_split_json(spec, base: Path, writer: _Writer, n_classes: int, counts: dict) -> None:
    image_dir = base / spec.image_dir
    split = {}
    for s, count in counts.items():
        rows = []
        for label, cname in enumerate(_class_names(spec.name, n_classes)):
            for _ in range(count):
                stem = _split_stem(spec.name, cname, label, writer.counter, s)
                path = writer.write(image_dir / stem, label)
                rows.append([path.relative_to(image_dir).as_posix(), label, cname])
        split[s] = _shuffled(rows, writer.seed + [len(s)])
    write_json(base / spec.split_file, split)


def _write_fgvc(spec, base: Path, writer: _Writer, n_classes: int, counts: dict) -> None:
    variants = _class_names(spec.name, n_classes)
    (base / spec.split_file).parent.mkdir(parents=True, exist_ok=True)
    (base / spec.split_file).write_text("".join(f"{v}\n" for v in variants))
    for s, count in counts.items():
        lines = []
        for label, variant in enumerate(variants):
            for _ in range(count):
                image_id = f"{1000000 + writer.counter:07d}"
                writer.write(base / spec.image_dir / image_id, label, force_ext=".jpg")
                lines.append(f"{image_id} {variant}\n")
        (base / f"images_variant_{s}.txt").write_text("".join(_shuffled(lines, writer.seed + [len(s)])))


def _write_imagenet_family(spec, base: Path, writer: _Writer, n_classes: int, n_train: int, n_test: int) -> None:
    classes = _imagenet_classes(n_classes)
    base.mkdir(parents=True, exist_ok=True)
    (base / spec.split_file).write_text("".join(f"{w} {c}\n" for w, c in classes))
    images = base / spec.image_dir
    if spec.kind == "imagenet":
        for wnid, _ in classes:
            for i in range(n_train):
                writer.write(images / "train" / wnid / f"{wnid}_{i}", _label(classes, wnid), ".JPEG")
        for wnid, _ in classes:
            for _ in range(n_test):
                writer.write(images / "val" / wnid / f"ILSVRC2012_val_{writer.counter:08d}",
                             _label(classes, wnid), ".JPEG")
    elif spec.kind == "imagenet_v2":
        for label in range(n_classes):
            for i in range(n_test):
                writer.write(images / str(label) / f"{writer.counter:040x}", label, ".jpeg")
    else:
        wnids = [w for w, _ in classes]
        if spec.name == "imagenet_a":
            wnids = wnids[1:]  # not the first ones, so imagenet_index is not the identity
        elif spec.name == "imagenet_r":
            wnids = wnids[:1] + wnids[2:]
        for wnid in wnids:
            for i in range(n_test):
                writer.write(images / wnid / f"{wnid}_{i}", _label(classes, wnid), ".JPEG")
        if spec.kind == "imagenet_subset":
            (images / "README.txt").write_text("fixture: class folders are ImageNet wnids\n")


def _label(classes: list[tuple[str, str]], wnid: str) -> int:
    return [w for w, _ in classes].index(wnid)
