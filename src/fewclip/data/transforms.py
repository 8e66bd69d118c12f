"""Image preprocessing (SPEC §1), each model's own (`fewclip.models.backbone.Preprocess`: open_clip's
`preprocess_cfg` of the model): test = resize by the model's `resize_mode` (`shortest`: the shorter
side to the input size + center crop, CLIP's; `squash`: both sides to the input size, no crop,
SigLIP's; `longest`: the longer side, then center pad) with its interpolation; train = random
resized crop + horizontal flip; Tip-Adapter's cache views use crop scale 0.5–1. Then the model's
mean/std. Every function also takes a bare input size: CLIP's preprocessing at that size."""

from __future__ import annotations

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("shortest", "squash", "longest")
# open_clip's names; 'random' (a training option of open_clip) is bicubic at inference, as there
INTERPOLATIONS = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "random": "BICUBIC"}


def as_preprocess(pre):
    """A `Preprocess` (or anything with its fields) as it is; an int: CLIP's at that input size."""
    if isinstance(pre, int):
        from ..models.backbone import Preprocess

        return Preprocess(pre, CLIP_MEAN, CLIP_STD, "bicubic", "shortest")
    return pre


def interpolation_mode(name: str):
    from torchvision.transforms import InterpolationMode

    from ..errors import ConfigError

    if name not in INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation '{name}' in the model's preprocess_cfg; "
                          f"fewclip knows {', '.join(INTERPOLATIONS)}")
    return getattr(InterpolationMode, INTERPOLATIONS[name])


def test_transform(pre, batched: bool = False):
    """The model's resize (+ crop or pad), then ToTensor + Normalize; `batched`: stop at an 8-bit
    tensor and leave the conversion to `collate_normalized` (the same values, computed once per batch)."""
    from torchvision import transforms as T

    pre = as_preprocess(pre)
    return T.Compose([*_resize(pre), *_to_input(pre, batched)])


def _resize(pre) -> list:
    from torchvision import transforms as T

    from ..errors import ConfigError

    mode, size = interpolation_mode(pre.interpolation), pre.size
    if pre.resize_mode == "shortest":
        return [T.Resize(size, interpolation=mode), T.CenterCrop(size)]
    if pre.resize_mode == "squash":
        return [T.Resize((size, size), interpolation=mode)]
    if pre.resize_mode == "longest":
        return [ResizeLongest(size, mode), CenterCropOrPad(size)]
    raise ConfigError(f"unknown resize_mode '{pre.resize_mode}' in the model's preprocess_cfg; "
                      f"fewclip knows {', '.join(RESIZE_MODES)}")


class ResizeLongest:
    """The longer side to `size`, the aspect ratio kept: open_clip's `ResizeKeepRatio(size, longest=1)`
    (its test transform for resize_mode 'longest'), same arithmetic."""

    def __init__(self, size: int, interpolation):
        self.size, self.interpolation = size, interpolation

    def __call__(self, img):
        from torchvision.transforms import functional as F

        _, h, w = F.get_dimensions(img)
        ratio = max(h / self.size, w / self.size)
        return F.resize(img, [round(h / ratio), round(w / ratio)], self.interpolation)


class CenterCropOrPad:
    """Center crop to `size`, padding with 0 (black) first where the image is smaller: open_clip's
    `center_crop_or_pad` with its default fill_color 0."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img):
        from torchvision.transforms import functional as F

        s = self.size
        _, h, w = F.get_dimensions(img)
        if s > w or s > h:
            img = F.pad(img, [(s - w) // 2 if s > w else 0, (s - h) // 2 if s > h else 0,
                              (s - w + 1) // 2 if s > w else 0, (s - h + 1) // 2 if s > h else 0], fill=0)
            _, h, w = F.get_dimensions(img)
            if h == s and w == s:
                return img
        return F.crop(img, int(round((h - s) / 2.0)), int(round((w - s) / 2.0)), s, s)


def train_transform(pre, scale: tuple[float, float] = (0.08, 1.0), batched: bool = False):
    """RandomResizedCrop (`scale`, the model's interpolation) + horizontal flip + the model's mean/std."""
    from torchvision import transforms as T

    pre = as_preprocess(pre)
    return T.Compose([
        T.RandomResizedCrop(pre.size, scale=scale, interpolation=interpolation_mode(pre.interpolation)),
        T.RandomHorizontalFlip(),
        *_to_input(pre, batched),
    ])


def view_transform(pre, batched: bool = False):
    """Augmented views of the few-shot train images (Tip-Adapter's cache, feature-level training)."""
    return train_transform(pre, scale=(0.5, 1.0), batched=batched)


def _to_input(pre, batched: bool) -> list:
    from torchvision import transforms as T

    return [T.PILToTensor()] if batched else [T.ToTensor(), T.Normalize(pre.mean, pre.std)]


def normalize_batch(images, preprocess=None):
    """uint8 [N, 3, H, W] -> the float model input, bit for bit what ToTensor + Normalize give
    image by image (x / 255, then (x - mean) / std, elementwise in fp32), with the mean/std of
    `preprocess` (a `Preprocess`; None: CLIP's)."""
    import torch

    mean, std = (CLIP_MEAN, CLIP_STD) if preprocess is None else (preprocess.mean, preprocess.std)
    x = images.to(torch.float32).div(255)
    mean = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


def collate_normalized(batch, preprocess=None):
    """DataLoader collate for `batched` transforms: (model input, labels); bind the model's
    preprocessing with `functools.partial(collate_normalized, preprocess=...)` (None: CLIP's)."""
    from torch.utils.data import default_collate

    images, labels = default_collate(batch)
    return normalize_batch(images, preprocess), labels


def apply_seeded(transform, image, seed: int):
    """`transform(image)` with torch's CPU random stream seeded to `seed` (and restored after).

    Seeds only the CPU generator the transforms draw from: `torch.manual_seed` would also queue a
    CUDA seeding call, which on a CUDA build without a GPU records a stack trace every time
    (a third of a CPU prompt-method run's time, before this)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return transform(image)
