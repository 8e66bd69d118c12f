"""The embedded demo world: procedurally drawn images, written in the real on-disk layouts.

Everything here is deterministic: the same seed gives the same bytes for every file. Images
are 32×32 PNGs drawn with numpy (shapes are rasterised at 4× and box-filtered, so edges are
anti-aliased). Each image draws its randomness from its own `numpy` stream keyed by
(seed, stream, dataset, split, class, index), so the micro-CLIP's pretraining pairs
(`pretrain_pair`, stream `PRETRAIN_STREAM`) never coincide with an evaluation image.

Datasets (SPEC §4 layouts, read by the same readers as the real ones):
- `demo_shapes` (ImageNet layout): 10 classes "colour shape" (e.g. "red circle"), objects of
  several sizes on plain, scene or texture backgrounds — the source dataset.
- `demo_textures` (split JSON, DTD-like): 8 full-frame texture classes ("striped", ...).
- `demo_scenes` (split JSON, SUN-like): 8 scene classes ("beach", "night sky", ...).
- DG targets of the source, in the spirit of ImageNet-V2 / -Sketch / -A / -R:
  `demo_shapes_v2` (resampled, slightly shifted), `demo_shapes_sketch` (grey edge drawings),
  `demo_shapes_a` (small objects among distractors on busy backgrounds, class subset) and
  `demo_shapes_r` (paintings, cartoons, pixel art; class subset).

Why few-shot methods have something to learn. As in real datasets, a class's images share
more than its name says, and the micro-CLIP's zero-shot classifier only knows the name:
- each source class has a usual setting (`HABITATS`: the red circles are mostly seen at sunset,
  the blue circles on the ocean...), and each texture class usual colours (`TEXTURE_PALETTES`);
- the source is photographed with a warm white balance (`CAMERA_CAST`) that no pretraining
  photo has — a domain shift, as satellite or texture images are for CLIP. Its V2 resample and
  the cluttered -A photos share that camera; sketches and renditions are not photos.
Without these, a 16-shot linear probe on the micro-CLIP's features scored below its zero-shot
classifier on the source (issue 7); tests/test_demo.py keeps the probe ahead.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32  # image side in pixels
_SS = 4  # supersampling factor for shape masks

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (40, 165, 60), "blue": (35, 75, 215), "yellow": (240, 215, 35),
    "purple": (135, 45, 175), "orange": (245, 135, 25), "white": (245, 245, 245), "black": (20, 20, 20),
    "pink": (245, 125, 185), "cyan": (40, 205, 215), "brown": (125, 75, 35), "grey": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond")
TEXTURES = ("striped", "dotted", "checkered", "zigzag", "grid", "wavy", "speckled", "blotchy")
SCENES = ("beach", "forest", "desert", "snowy field", "ocean", "night sky", "sunset", "meadow")
SIZES = {"small": (0.28, 0.38), "medium": (0.38, 0.52), "large": (0.52, 0.68)}

# Source classes: (colour, shape); pairs share colours and shapes so some are confusable.
SHAPE_CLASSES = [
    ("red", "circle"), ("blue", "circle"), ("green", "square"), ("red", "square"),
    ("yellow", "triangle"), ("blue", "triangle"), ("purple", "star"), ("orange", "cross"),
    ("green", "ring"), ("white", "diamond"),
]
# What a class's images share beyond its name (see the module docstring): each source class's
# usual setting, each texture class's usual colours, and the source's camera.
HABITATS = ("sunset", "ocean", "forest", "desert", "beach", "snowy field", "night sky", "meadow",
            "striped", "checkered")  # background of source class i, drawn with probability HABITAT_P
HABITAT_P = 0.7
TEXTURE_PALETTES = {"striped": ("black", "yellow"), "dotted": ("white", "red"), "checkered": ("black", "white"),
                    "zigzag": ("blue", "orange"), "grid": ("grey", "cyan"), "wavy": ("blue", "white"),
                    "speckled": ("brown", "pink"), "blotchy": ("green", "brown")}  # with probability PALETTE_P
PALETTE_P = 0.7
CAMERA_CAST = (1.0, 0.85, 0.6)  # per-channel gains (a warm white balance) of the source's photos
A_SUBSET = (0, 2, 3, 5, 7, 8)  # labels of the source kept by demo_shapes_a
R_SUBSET = (0, 1, 2, 3, 4, 5)  # labels of the source kept by demo_shapes_r

N_TRAIN, N_VAL, N_TEST = 20, 5, 20  # images per class

# Difficulty of the DG targets (chosen so that every target scores below the source zero-shot).
SKETCH_COLOUR = 0.03  # share of the class colour in a sketch's pencil outline (the rest is grey)
# (the pretraining corpus draws its sketches with its own PRETRAIN_SKETCH_COLOUR, so tuning the
# DG targets never changes the micro-CLIP)
R_WASHOUT = 0.85  # how far demo_shapes_r's renditions are pulled towards grey

# Stream ids (second key of every image's random stream). Pretraining has its own.
PRETRAIN_STREAM = 1000
_STREAMS = {"demo_shapes": 1, "demo_textures": 2, "demo_scenes": 3, "demo_shapes_v2": 4,
            "demo_shapes_sketch": 5, "demo_shapes_a": 6, "demo_shapes_r": 7}
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

def shape_classnames() -> list[str]:
    return [f"{c} {s}" for c, s in SHAPE_CLASSES]


def shape_wnids() -> list[str]:
    """WordNet-like folder ids, sorted in label order (as ImageNet's are)."""
    return [f"n{90000000 + i:08d}" for i in range(len(SHAPE_CLASSES))]


# ----------------------------------------------------------------------------- drawing


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(n) + 0.5) / n * 2 - 1  # pixel centres in [-1, 1]
    return np.meshgrid(c, c)  # x (columns), y (rows, downwards)


_GRID_SS = _grid(SIZE * _SS)
_GRID = _grid(SIZE)


def _downsample(mask: np.ndarray) -> np.ndarray:
    return mask.reshape(SIZE, _SS, SIZE, _SS).mean(axis=(1, 3))


def shape_mask(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape centred at (cx, cy), radius r, rotated by angle."""
    gx, gy = _GRID_SS
    x, y = gx - cx, gy - cy
    ca, sa = np.cos(angle), np.sin(angle)
    x, y = ca * x + sa * y, -sa * x + ca * y
    rho = np.hypot(x, y)
    if shape == "circle":
        m = rho < r
    elif shape == "ring":
        m = (rho < r) & (rho > 0.55 * r)
    elif shape == "square":
        m = np.maximum(np.abs(x), np.abs(y)) < 0.8 * r
    elif shape == "diamond":
        m = np.abs(x) / 0.75 + np.abs(y) < r
    elif shape == "triangle":
        # equilateral, pointing up (y grows downwards)
        m = (y < 0.5 * r) & (np.sqrt(3) * x - y < r) & (-np.sqrt(3) * x - y < r)
    elif shape == "star":
        theta = np.arctan2(y, x)
        m = rho < r * (0.6 + 0.4 * np.cos(5 * theta + np.pi / 2))
    elif shape == "cross":
        w = 0.3 * r
        m = ((np.abs(x) < w) & (np.abs(y) < r)) | ((np.abs(y) < w) & (np.abs(x) < r))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return _downsample(m.astype(np.float32))


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _jitter(rng, colour, amount: float = 25.0) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.normal(0, amount, 3), 0, 255)


def texture_mask(rng, texture: str, scale: float = 1.0) -> np.ndarray:
    """A binary-ish pattern in [0, 1] over the image."""
    gx, gy = _GRID
    gx = gx * (SIZE / 2) / scale
    gy = gy * (SIZE / 2) / scale  # pixel units
    phase = rng.uniform(0, 2 * np.pi)
    if texture == "striped":
        th = rng.choice([0, np.pi / 2, np.pi / 4, 3 * np.pi / 4]) + rng.normal(0, 0.08)
        period = rng.uniform(5, 8)
        m = np.sin(2 * np.pi * (gx * np.cos(th) + gy * np.sin(th)) / period + phase) > 0
    elif texture == "dotted":
        p = rng.uniform(5, 8)
        ox, oy = rng.uniform(0, p, 2)
        dx = np.mod(gx + ox, p) - p / 2
        dy = np.mod(gy + oy, p) - p / 2
        m = np.hypot(dx, dy) < p * rng.uniform(0.22, 0.3)
    elif texture == "checkered":
        p = rng.uniform(5, 8)
        ox, oy = rng.uniform(0, p, 2)
        m = (np.floor((gx + ox) / p) + np.floor((gy + oy) / p)) % 2 == 0
    elif texture == "zigzag":
        p = rng.uniform(5, 8)
        tri = np.abs(np.mod(gx / p, 1.0) - 0.5) * p
        m = np.sin(2 * np.pi * (gy + 1.2 * tri) / p + phase) > 0
        if rng.random() < 0.5:
            m = m.T
    elif texture == "grid":
        p = rng.uniform(5, 8)
        ox, oy = rng.uniform(0, p, 2)
        m = (np.mod(gx + ox, p) < 1.3) | (np.mod(gy + oy, p) < 1.3)
    elif texture == "wavy":
        p = rng.uniform(5, 8)
        amp, q = rng.uniform(1.5, 3), rng.uniform(10, 16)
        m = np.sin(2 * np.pi * (gy + amp * np.sin(2 * np.pi * gx / q)) / p + phase) > 0
        if rng.random() < 0.5:
            m = m.T
    elif texture == "speckled":
        m = rng.random((SIZE, SIZE)) < rng.uniform(0.15, 0.3)
    elif texture == "blotchy":
        small = rng.random((5, 5)).astype(np.float32)
        big = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC))
        m = big > 128
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return m.astype(np.float32)


def _two_colours(rng) -> tuple[np.ndarray, np.ndarray]:
    names = list(COLOURS)
    i, j = rng.choice(len(names), 2, replace=False)
    return _jitter(rng, COLOURS[names[i]], 20), _jitter(rng, COLOURS[names[j]], 20)


def texture_image(rng, texture: str, contrast: float = 1.0, palette=None) -> np.ndarray:
    if palette is None:
        a, b = _two_colours(rng)
    else:
        a, b = (_jitter(rng, COLOURS[c], 20) for c in palette)
    b = a + contrast * (b - a)
    m = texture_mask(rng, texture)[..., None]
    return a * (1 - m) + b * m


def _vgrad(top, bottom, h: int) -> np.ndarray:
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    return np.broadcast_to((1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32), (h, SIZE, 3))


def scene_image(rng, scene: str) -> np.ndarray:
    img = np.zeros((SIZE, SIZE, 3), np.float32)
    h = int(rng.integers(9, 15))  # horizon row
    rows = np.arange(SIZE)[:, None]
    cols = np.arange(SIZE)[None, :]
    if scene == "beach":
        img[:h] = _vgrad((120, 180, 240), (180, 220, 250), h)
        s = h + int(rng.integers(4, 8))
        img[h:s] = _jitter(rng, (30, 110, 200), 12)
        img[s:] = _jitter(rng, (230, 205, 150), 12)
    elif scene == "forest":
        img[:] = _jitter(rng, (25, 90, 35), 12)
        for _ in range(int(rng.integers(3, 6))):
            x = int(rng.integers(0, SIZE - 2))
            img[:, x:x + 2] = _jitter(rng, (90, 55, 25), 10)
        for _ in range(int(rng.integers(4, 8))):
            cx, cy, r = rng.uniform(0, SIZE, 2).tolist() + [rng.uniform(3, 6)]
            blob = (cols - cx) ** 2 + (rows - cy) ** 2 < r * r
            img[blob] = _jitter(rng, (40, 130, 45), 15)
    elif scene == "desert":
        img[:h] = _vgrad((150, 200, 245), (225, 235, 245), h)
        dune = h + 2 * np.sin(cols / rng.uniform(3, 6) + rng.uniform(0, 6))
        img[np.broadcast_to(rows >= dune, (SIZE, SIZE))] = _jitter(rng, (225, 165, 75), 12)
    elif scene == "snowy field":
        img[:h] = _jitter(rng, (175, 180, 190), 10)
        img[h:] = _jitter(rng, (240, 242, 248), 6)
        for _ in range(int(rng.integers(2, 5))):
            x, y = int(rng.integers(0, SIZE)), int(rng.integers(h, SIZE))
            img[y, x] = (60, 60, 70)
    elif scene == "ocean":
        img[:h] = _vgrad((110, 170, 235), (170, 210, 245), h)
        img[h:] = _vgrad((25, 90, 180), (10, 40, 110), SIZE - h)
        wave = (np.sin(cols / 2.0 + rows * 1.3 + rng.uniform(0, 6)) > 0.92) & (rows > h)
        img[wave] = (230, 240, 250)
    elif scene == "night sky":
        img[:] = _vgrad((5, 5, 30), (20, 25, 60), SIZE)
        n = int(rng.integers(12, 25))
        ys, xs = rng.integers(0, SIZE, n), rng.integers(0, SIZE, n)
        img[ys, xs] = (250, 250, 230)
        if rng.random() < 0.5:
            cx, cy = rng.uniform(4, 28, 2)
            img[(cols - cx) ** 2 + (rows - cy) ** 2 < 9] = (240, 235, 200)
    elif scene == "sunset":
        img[:] = _vgrad(_jitter(rng, (250, 150, 50), 15), _jitter(rng, (170, 60, 120), 15), SIZE)
        g = SIZE - int(rng.integers(4, 9))
        img[g:] = _jitter(rng, (40, 20, 30), 8)
        cx = rng.uniform(6, 26)
        img[((cols - cx) ** 2 + (rows - g) ** 2 < 16) & (rows < g)] = (255, 230, 120)
    elif scene == "meadow":
        img[:h] = _vgrad((100, 165, 235), (175, 215, 245), h)
        img[h:] = _jitter(rng, (95, 175, 60), 12)
        for _ in range(int(rng.integers(6, 12))):
            x, y = int(rng.integers(0, SIZE)), int(rng.integers(h + 1, SIZE))
            img[y, x] = _jitter(rng, COLOURS[str(rng.choice(["red", "yellow", "white", "pink"]))], 10)
    else:
        raise ValueError(f"unknown scene {scene!r}")
    return img


def plain_background(rng) -> np.ndarray:
    names = list(COLOURS)
    c = _jitter(rng, COLOURS[names[int(rng.integers(len(names)))]], 30)
    return np.broadcast_to(0.5 * c + 0.5 * rng.uniform(60, 200), (SIZE, SIZE, 3)).astype(np.float32)


def habitat_background(rng, word: str) -> np.ndarray:
    """The background named `word` (a scene or a texture)."""
    if word in SCENES:
        return scene_image(rng, word)
    return texture_image(rng, word, contrast=rng.uniform(0.3, 0.7))


def random_background(rng, weights=(0.3, 0.4, 0.3)) -> tuple[np.ndarray, str, str | None]:
    """(image, kind, word): kind plain | scene | texture, word = the scene or texture name."""
    kind = ["plain", "scene", "texture"][int(rng.choice(3, p=np.asarray(weights) / sum(weights)))]
    if kind == "plain":
        return plain_background(rng), kind, None
    words = SCENES if kind == "scene" else TEXTURES
    word = words[int(rng.integers(len(words)))]
    return habitat_background(rng, word), kind, word


def _place(rng, size_range) -> tuple[float, float, float]:
    r = rng.uniform(*size_range)
    lim = max(0.0, 0.95 - r)
    cx, cy = rng.uniform(-lim, lim, 2)
    return float(cx), float(cy), float(r)


def draw_object(rng, bg: np.ndarray, colour: str, shape: str, size_range=(0.3, 0.65),
                fill_texture: str | None = None, outline: bool = False) -> np.ndarray:
    cx, cy, r = _place(rng, size_range)
    angle = rng.normal(0, 0.25)
    m = shape_mask(shape, cx, cy, r, angle)[..., None]
    col = _jitter(rng, COLOURS[colour])
    fill = np.broadcast_to(col, (SIZE, SIZE, 3))
    if fill_texture is not None:
        t = texture_mask(rng, fill_texture, scale=0.8)[..., None]
        fill = col * (1 - 0.45 * t)
    out = bg * (1 - m) + fill * m
    if outline:
        edge = _edges(m[..., 0])[..., None]
        out = out * (1 - edge) + 15 * edge
    return out


def _edges(m: np.ndarray) -> np.ndarray:
    """Soft edge map of a coverage mask (gradient magnitude, clipped to [0, 1])."""
    gy, gx = np.gradient(m)
    return np.clip(np.hypot(gx, gy) * 2.2, 0, 1)


def _finish(rng, img: np.ndarray, noise: float = 6.0) -> np.ndarray:
    img = img + rng.normal(0, noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _box_blur(img: np.ndarray) -> np.ndarray:
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return sum(p[i:i + SIZE, j:j + SIZE] for i in range(3) for j in range(3)) / 9.0


# ----------------------------------------------------------------------------- image styles


def photo(rng, colour: str, shape: str, *, size_range=(0.3, 0.65), noise: float = 6.0,
          bg_weights=(0.3, 0.4, 0.3), habitat: str | None = None) -> tuple[np.ndarray, dict]:
    """An object photo; with `habitat`, the background is that setting with probability HABITAT_P."""
    if habitat is not None and rng.random() < HABITAT_P:
        bg, kind, word = habitat_background(rng, habitat), "habitat", habitat
    else:
        bg, kind, word = random_background(rng, bg_weights)
    tex = TEXTURES[int(rng.integers(len(TEXTURES)))] if rng.random() < 0.2 else None
    img = draw_object(rng, bg, colour, shape, size_range, fill_texture=tex)
    return _finish(rng, img, noise), {"bg": kind, "bg_word": word, "fill": tex}


def sketch(rng, colour: str, shape: str, colour_share: float = SKETCH_COLOUR) -> np.ndarray:
    """Pencil drawing (ImageNet-Sketch-like): no background, no fill colour — grey shading whose
    darkness follows the colour's brightness, and the outline in a faint, mostly grey coloured pencil."""
    cx, cy, r = _place(rng, (0.35, 0.7))
    m = shape_mask(shape, cx, cy, r, rng.normal(0, 0.25))[..., None]
    col = np.asarray(COLOURS[colour], np.float32)
    lum = float(np.dot(col, (0.299, 0.587, 0.114)))
    paper = rng.uniform(215, 250)
    shade = paper - rng.uniform(0.25, 0.45) * (paper - lum)
    gx, gy = _GRID
    hatch = (np.sin((gx + gy) * SIZE * rng.uniform(0.8, 1.2) + rng.uniform(0, 6)) > 0.3) * 18.0
    img = paper * (1 - m) + (shade + hatch[..., None]) * m
    pencil = colour_share * col + (1 - colour_share) * lum - rng.uniform(10, 50)  # mostly grey
    edge = _edges(m[..., 0])[..., None]
    img = img * (1 - edge) + np.clip(pencil, 0, 255) * edge
    for _ in range(int(rng.integers(0, 3))):  # stray grey strokes
        y, x0 = int(rng.integers(0, SIZE)), int(rng.integers(0, SIZE - 8))
        img[y, x0:x0 + int(rng.integers(3, 8))] = rng.uniform(90, 150)
    grain = rng.normal(0, 8, (SIZE, SIZE, 1))  # grey paper grain
    return np.clip(np.rint(img + grain), 0, 255).astype(np.uint8)


def cluttered(rng, colour: str, shape: str) -> np.ndarray:
    """ImageNet-A-like: a small object among distractors on a busy background."""
    t = TEXTURES[int(rng.integers(len(TEXTURES)))]
    img = texture_image(rng, t, contrast=rng.uniform(0.5, 1.0))
    names = list(COLOURS)
    for _ in range(int(rng.integers(2, 4))):
        dc, ds = names[int(rng.integers(len(names)))], SHAPES[int(rng.integers(len(SHAPES)))]
        if (dc, ds) == (colour, shape):
            continue
        img = draw_object(rng, img, dc, ds, (0.18, 0.3))
    img = draw_object(rng, img, colour, shape, (0.25, 0.4))
    return _finish(rng, img, 12.0)


def rendition(rng, colour: str, shape: str, style: str, hard: bool = False) -> np.ndarray:
    img = _rendition(rng, colour, shape, style, hard)
    if hard:  # washed-out print: colours pulled towards the image's mean grey
        img = np.rint((1 - R_WASHOUT) * img + R_WASHOUT * img.mean()).astype(np.uint8)
    return img


def _rendition(rng, colour: str, shape: str, style: str, hard: bool) -> np.ndarray:
    """ImageNet-R-like renditions: painting, cartoon or pixel art (`hard`: the DG target's
    stronger versions — heavier blur and brush noise, busier cartoon backgrounds, coarser pixels)."""
    if style == "cartoon":
        if hard:
            bg = texture_image(rng, _pick(rng, TEXTURES), contrast=rng.uniform(0.2, 0.45))
        else:
            bg = np.broadcast_to(0.4 * _jitter(rng, COLOURS[_pick(rng, list(COLOURS))]) + 150,
                                 (SIZE, SIZE, 3)).astype(np.float32)
        img = draw_object(rng, bg, colour, shape, (0.25, 0.45) if hard else (0.4, 0.68), outline=True)
        return _finish(rng, img, 22.0 if hard else 2.0)
    if style == "painting":
        bg, _, _ = random_background(rng, (0.2, 0.6, 0.2))
        img = draw_object(rng, bg, colour, shape, (0.22, 0.45) if hard else (0.35, 0.65))
        for _ in range(2 if hard else 1):
            img = _box_blur(img)
        strokes = rng.normal(0, 30 if hard else 18, (SIZE // 2, SIZE // 2, 3)).repeat(2, 0).repeat(2, 1)
        img = np.round((img + strokes) / 48) * 48  # posterised brush colours
        return _finish(rng, img, 22.0 if hard else 4.0)
    if style == "pixel art":
        bg, _, _ = random_background(rng, (0.3, 0.4, 0.3) if hard else (0.5, 0.3, 0.2))
        img = draw_object(rng, bg, colour, shape, (0.3, 0.5) if hard else (0.45, 0.7))
        small = img.reshape(8, 4, 8, 4, 3).mean(axis=(1, 3))
        small = np.round(small / 64) * 64 if hard else small  # fewer colours
        return _finish(rng, small.repeat(4, 0).repeat(4, 1), 22.0 if hard else 1.0)
    raise ValueError(f"unknown style {style!r}")


R_STYLES = ("painting", "cartoon", "pixel art")


def texture_sample(rng, texture: str, palette=None) -> np.ndarray:
    return _finish(rng, texture_image(rng, texture, contrast=rng.uniform(0.7, 1.0), palette=palette), 6.0)


def _texture_class_sample(rng, texture: str) -> np.ndarray:
    """A demo_textures image: usually in its class's colours, otherwise in two random ones."""
    palette = TEXTURE_PALETTES[texture] if rng.random() < PALETTE_P else None
    return texture_sample(rng, texture, palette)


def scene_sample(rng, scene: str) -> np.ndarray:
    img = scene_image(rng, scene)
    img = img * rng.uniform(0.75, 1.2) + rng.normal(0, 18, 3)  # exposure and colour cast
    names = list(COLOURS)
    for _ in range(int(rng.integers(0, 3))):  # unrelated objects in the scene
        img = draw_object(rng, img, _pick(rng, names), _pick(rng, SHAPES), (0.15, 0.35))
    return _finish(rng, img, 10.0)


# ----------------------------------------------------------------------------- pretraining pairs

# Cumulative shares of the pretraining corpus: photos, textures, scenes, sketches, renditions.
PRETRAIN_MIX = (0.44, 0.64, 0.78, 0.97)
PRETRAIN_SKETCH_COLOUR = 0.05  # the pretraining sketches' share of the class colour in the outline
SKETCH_COLOUR_P = 1.0  # how often a sketch's caption names the colour of the class it draws

_PHOTO_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "an image of a {}.", "a {}.", "{}",
                    "a picture of a {}.", "itap of a {}.", "a bad photo of the {}.", "a close-up photo of a {}.",
                    "a good photo of a {}.")
_SCENE_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a {}.", "a {} landscape.", "a view of a {}.",
                    "itap of a {}.")
_TEXTURE_TEMPLATES = ("{} texture.", "a {} texture.", "a {} pattern.", "a photo of a {} texture.", "{} pattern.")
_STYLE_TEMPLATES = {
    "sketch": ("a sketch of a {}.", "a drawing of a {}.", "a pencil sketch of the {}.",
               "a black and white sketch of a {}."),
    "painting": ("a painting of a {}.", "art of the {}.", "a painting of the {}."),
    "cartoon": ("a cartoon {}.", "a cartoon of a {}.", "an illustration of a {}."),
    "pixel art": ("pixel art of a {}.", "a {} in a video game.", "a pixelated {}."),
}


def _object_words(rng, colour: str, shape: str, *, colour_p: float = 0.9, size: str | None = None,
                  fill: str | None = None) -> str:
    words = []
    if size is not None and rng.random() < 0.3:
        words.append(size)
    if rng.random() < colour_p:
        words.append(colour)
    if fill is not None and rng.random() < 0.6:
        words.append(fill)
    words.append(shape)
    return " ".join(words)


def pretrain_pair(seed: int, index: int) -> tuple[np.ndarray, str]:
    """The `index`-th image–caption pair of the pretraining corpus (stream PRETRAIN_STREAM)."""
    rng = np.random.default_rng([seed, PRETRAIN_STREAM, index])
    kind = rng.random()
    colour = _pick(rng, list(COLOURS))
    shape = _pick(rng, SHAPES)
    if kind < PRETRAIN_MIX[0]:  # object photo
        size = _pick(rng, list(SIZES))
        bg, bg_kind, word = random_background(rng)
        fill = _pick(rng, TEXTURES) if rng.random() < 0.2 else None
        img = _finish(rng, draw_object(rng, bg, colour, shape, SIZES[size], fill_texture=fill), 6.0)
        desc = _object_words(rng, colour, shape, size=size, fill=fill)
        if word is not None and rng.random() < 0.5:
            desc += f" on a {word} background" if bg_kind == "texture" else f" in a {word}"
        return img, _pick(rng, _PHOTO_TEMPLATES).format(desc)
    if kind < PRETRAIN_MIX[1]:  # texture
        t = _pick(rng, TEXTURES)
        img = texture_sample(rng, t)
        return img, _pick(rng, _TEXTURE_TEMPLATES).format(t)
    if kind < PRETRAIN_MIX[2]:  # scene
        s = _pick(rng, SCENES)
        img = _finish(rng, scene_image(rng, s), 6.0)
        return img, _pick(rng, _SCENE_TEMPLATES).format(s)
    if kind < PRETRAIN_MIX[3]:  # sketches (captions name the class, as ImageNet-Sketch's folders do)
        img = sketch(rng, colour, shape, PRETRAIN_SKETCH_COLOUR)
        desc = _object_words(rng, colour, shape, colour_p=SKETCH_COLOUR_P)
        return img, _pick(rng, _STYLE_TEMPLATES["sketch"]).format(desc)
    style = _pick(rng, R_STYLES)  # renditions (rarer: the DG targets stay harder)
    img = rendition(rng, colour, shape, style)
    return img, _pick(rng, _STYLE_TEMPLATES[style]).format(_object_words(rng, colour, shape))


# ----------------------------------------------------------------------------- the world on disk


def _folder(name: str) -> str:
    from .datasets import get_spec

    return get_spec(name).folder


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _rng(seed: int, dataset: str, split: str, label: int, idx: int):
    return np.random.default_rng([seed, _STREAMS[dataset], _SPLIT_IDS[split], label, idx])


def _classnames_txt(path: Path) -> None:
    lines = [f"{w} {n}" for w, n in zip(shape_wnids(), shape_classnames())]
    _write(path, ("\n".join(lines) + "\n").encode())


def camera(img: np.ndarray) -> np.ndarray:
    """The source world's camera: its white balance (CAMERA_CAST) applied to a uint8 photo."""
    gains = np.asarray(CAMERA_CAST, np.float32)
    return np.clip(np.rint(img.astype(np.float32) * gains), 0, 255).astype(np.uint8)


def _write_shapes(root: Path, seed: int) -> None:
    base = root / _folder("demo_shapes")
    _classnames_txt(base / "classnames.txt")
    counts = {"train": N_TRAIN, "val": N_TEST}  # ImageNet layout: val is the test set
    for split, n in counts.items():
        for label, (wnid, (colour, shape)) in enumerate(zip(shape_wnids(), SHAPE_CLASSES)):
            for i in range(n):
                img, _ = photo(_rng(seed, "demo_shapes", split, label, i), colour, shape,
                               habitat=HABITATS[label])
                img = camera(img)
                _write(base / "images" / split / wnid / f"{wnid}_{i:04d}.png", _png(img))


def _write_v2(root: Path, seed: int) -> None:
    """Resampled like ImageNet-V2: same classes, fresh draws, slightly shifted sizes and noise."""
    base = root / _folder("demo_shapes_v2")
    _classnames_txt(base / "classnames.txt")
    for label, (colour, shape) in enumerate(SHAPE_CLASSES):
        for i in range(N_TEST):
            rng = _rng(seed, "demo_shapes_v2", "test", label, i)
            img, _ = photo(rng, colour, shape, size_range=(0.22, 0.45), noise=16.0, bg_weights=(0.1, 0.45, 0.45),
                           habitat=HABITATS[label])
            img = camera(img)
            _write(base / "images" / str(label) / f"{i:04d}.png", _png(img))


def _write_wnid_target(root: Path, seed: int, name: str, labels, draw) -> None:
    base = root / _folder(name)
    _classnames_txt(base / "classnames.txt")
    wnids = shape_wnids()
    for label in labels:
        colour, shape = SHAPE_CLASSES[label]
        for i in range(N_TEST):
            img = draw(_rng(seed, name, "test", label, i), colour, shape, i)
            _write(base / "images" / wnids[label] / f"{wnids[label]}_{i:04d}.png", _png(img))


def _write_split_json(root: Path, seed: int, name: str, classes, draw) -> None:
    base = root / _folder(name)
    split = {}
    for s, n in (("train", N_TRAIN), ("val", N_VAL), ("test", N_TEST)):
        rows = []
        for label, cname in enumerate(classes):
            folder = cname.replace(" ", "_")
            for i in range(n):
                rel = f"{folder}/{folder}_{s}_{i:04d}.png"
                _write(base / "images" / rel, _png(draw(_rng(seed, name, s, label, i), cname)))
                rows.append([rel, label, folder])
        split[s] = rows
    _write(base / "split_demo.json", (json.dumps(split, indent=1) + "\n").encode())


def write_demo_world(root, seed: int = 0) -> None:
    """Write all seven demo datasets under the data root `root` (same seed -> same bytes)."""
    root = Path(root)
    _write_shapes(root, seed)
    _write_v2(root, seed)
    _write_wnid_target(root, seed, "demo_shapes_sketch", range(len(SHAPE_CLASSES)),
                       lambda rng, c, s, i: sketch(rng, c, s))
    _write_wnid_target(root, seed, "demo_shapes_a", A_SUBSET, lambda rng, c, s, i: camera(cluttered(rng, c, s)))
    _write_wnid_target(root, seed, "demo_shapes_r", R_SUBSET,
                       lambda rng, c, s, i: rendition(rng, c, s, R_STYLES[i % len(R_STYLES)], hard=True))
    _write_split_json(root, seed, "demo_textures", TEXTURES, _texture_class_sample)
    _write_split_json(root, seed, "demo_scenes", SCENES, scene_sample)
