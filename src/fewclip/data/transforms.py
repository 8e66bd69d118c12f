"""CLIP preprocessing (SPEC §1): test = resize shorter side + center crop; train = random
resized crop + horizontal flip; Tip-Adapter's cache views use crop scale 0.5–1."""

from __future__ import annotations

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def test_transform(size: int, batched: bool = False):
    """Resize + center crop, then ToTensor + Normalize; `batched`: stop at an 8-bit tensor and
    leave the conversion to `collate_normalized` (the same values, computed once per batch)."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        *_to_input(batched),
    ])


def train_transform(size: int, scale: tuple[float, float] = (0.08, 1.0), batched: bool = False):
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        *_to_input(batched),
    ])


def view_transform(size: int, batched: bool = False):
    """Augmented views of the few-shot train images (Tip-Adapter's cache, feature-level training)."""
    return train_transform(size, scale=(0.5, 1.0), batched=batched)


def _to_input(batched: bool) -> list:
    from torchvision import transforms as T

    return [T.PILToTensor()] if batched else [T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)]


def normalize_batch(images):
    """uint8 [N, 3, H, W] -> the float model input, bit for bit what ToTensor + Normalize give
    image by image (x / 255, then (x - mean) / std, elementwise in fp32)."""
    import torch

    x = images.to(torch.float32).div(255)
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


def collate_normalized(batch):
    """DataLoader collate for `batched` transforms: (model input, labels)."""
    from torch.utils.data import default_collate

    images, labels = default_collate(batch)
    return normalize_batch(images), labels


def apply_seeded(transform, image, seed: int):
    """`transform(image)` with torch's CPU random stream seeded to `seed` (and restored after).

    Seeds only the CPU generator the transforms draw from: `torch.manual_seed` would also queue a
    CUDA seeding call, which on a CUDA build without a GPU records a stack trace every time
    (a third of a CPU prompt-method run's time, before this)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return transform(image)
