"""The feature store: each (backbone, dataset, split) is encoded once, stored fp16, and reused.

Layout under `root/{backbone_key}/{dataset}/`:
- `test.pt`     every test image (test transform)
- `fewshot.pt`  the union of all few-shot manifests' train + val images (test transform)
- `views.pt`    V augmented views (crop scale 0.5–1 + flip) of the union's train images
- `text.pt`     hand-crafted text features of the classes, one entry per template set

Files are dicts of tensors and string lists, written atomically, read with weights_only=True.
Reading them needs torch only: jobs that use stored features never import open_clip.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import FewclipError
from ..io import atomic_path

VIEW_SEED = 0


@dataclass
class Features:
    paths: list[str]
    labels: torch.Tensor  # [N] long
    features: torch.Tensor  # [N, d] (or [V, N, d] for views), float32, L2-normalised

    def select(self, paths: list[str]) -> "Features":
        """Rows for the given image paths, in that order."""
        index = {p: i for i, p in enumerate(self.paths)}
        missing = [p for p in paths if p not in index]
        if missing:
            raise FewclipError(
                f"{len(missing)} images of the manifest are not in the feature store (first: {missing[0]}); "
                "re-encode the features for the current manifests (fewclip encode)"
            )
        rows = torch.tensor([index[p] for p in paths], dtype=torch.long)
        return Features(list(paths), self.labels[rows], self.features[..., rows, :])


def save(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: Path) -> dict:
    if not Path(path).is_file():
        raise FewclipError(f"feature file missing: {path}; run `fewclip encode` (or the workflow's encode rule) first")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and how to fix
        raise FewclipError(f"cannot read feature file {path} ({err}); delete it and re-encode") from err


def load_features(path: Path) -> Features:
    obj = load(path)
    return Features(obj["paths"], obj["labels"].long(), obj["features"].float())


class ImageItems(torch.utils.data.Dataset):
    """Images of `items` through `transform`. With `view` set, the augmentation of each image is
    seeded by (path, view), so a view's features do not depend on which other images are encoded."""

    def __init__(self, dataset, items, transform, view: int | None = None):
        self.dataset, self.items, self.transform, self.view = dataset, items, transform, view

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from ..data.images import load_image
        from ..data.transforms import apply_seeded

        item = self.items[i]
        image = load_image(self.dataset.abspath(item))
        if self.view is None:
            return self.transform(image), item.label
        return apply_seeded(self.transform, image, zlib.crc32(item.path.encode()) * 1009 + self.view + VIEW_SEED), item.label


def encode_items(backbone, dataset, items, transform, batch_size: int = 128, workers: int = 0,
                 desc: str = "encode", view: int | None = None) -> torch.Tensor:
    """[N, d] L2-normalised image features of `items`, in order, with a progress bar."""
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(
        ImageItems(dataset, items, transform, view), batch_size=batch_size, num_workers=workers,
        shuffle=False, pin_memory=backbone.device.type == "cuda",
    )
    out = [backbone.encode_images(images).cpu() for images, _ in tqdm(loader, desc=desc, unit="batch", leave=False)]
    return torch.cat(out) if out else torch.zeros(0, backbone.embed_dim)


def _record(items, feats) -> dict:
    return {
        "paths": [it.path for it in items],
        "labels": torch.tensor([it.label for it in items], dtype=torch.long),
        "features": feats.half(),
    }


def _merge(old: dict | None, new: dict, axis: int = 0) -> dict:
    if old is None:
        return new
    return {
        "paths": old["paths"] + new["paths"],
        "labels": torch.cat([old["labels"], new["labels"]]),
        "features": torch.cat([old["features"], new["features"]], dim=axis),
    }


class FeatureStore:
    """One (backbone, dataset) folder of the store. `ensure_*` encode only what is missing,
    through `backbone()`, a callable that loads the backbone on first use (so a store that
    already holds everything never imports open_clip)."""

    def __init__(self, root: Path, dataset, backbone, workers: int = 0, batch_size: int = 128):
        self.root, self.dataset, self._backbone_fn = Path(root), dataset, backbone
        self._backbone = None
        self.workers, self.batch_size = workers, batch_size
        self.images_encoded = 0  # image-encoder calls made through this store (per image)

    @property
    def backbone(self):
        if self._backbone is None:
            self._backbone = self._backbone_fn()
        return self._backbone

    def _encode(self, items, transform, desc, view=None):
        self.images_encoded += len(items)
        return encode_items(self.backbone, self.dataset, items, transform, self.batch_size,
                            self.workers, desc, view)

    def text(self, template_set: str = "dataset") -> torch.Tensor:
        from ..models.templates import class_text_features

        path = self.root / "text.pt"
        obj = load(path) if path.is_file() else {"classnames": list(self.dataset.classnames), "templates": {}}
        if obj["classnames"] != list(self.dataset.classnames):
            raise FewclipError(f"{path} was encoded for other class names; delete it and re-encode")
        if template_set not in obj["templates"]:
            obj["templates"][template_set] = class_text_features(
                self.backbone, self.dataset.classnames, template_set, self.dataset.template).cpu()
            save(path, obj)
        return obj["templates"][template_set].float()

    def test(self) -> Features:
        from ..data.transforms import test_transform

        path = self.root / "test.pt"
        if not path.is_file():
            items = self.dataset.test
            feats = self._encode(items, test_transform(self.backbone.image_size), f"{self.dataset.name} test")
            save(path, _record(items, feats))
        return load_features(path)

    def fewshot(self, items) -> Features:
        """Test-transform features of the few-shot train/val `items` (encoding any not yet stored)."""
        from ..data.transforms import test_transform

        path = self.root / "fewshot.pt"
        old = load(path) if path.is_file() else None
        have = set(old["paths"]) if old else set()
        todo = _unique([it for it in items if it.path not in have])
        if todo:
            feats = self._encode(todo, test_transform(self.backbone.image_size), f"{self.dataset.name} few-shot")
            save(path, _merge(old, _record(todo, feats)))
        return load_features(path).select([it.path for it in items])

    def views(self, items, n_views: int) -> Features:
        """[V, N, d] augmented-view features of the few-shot train `items`."""
        from ..data.transforms import view_transform

        path = self.root / "views.pt"
        old = load(path) if path.is_file() else None
        if old is not None and old["features"].shape[0] < n_views:
            raise FewclipError(f"{path} holds {old['features'].shape[0]} views, {n_views} are needed; "
                               "delete it and re-encode with more views")
        have = set(old["paths"]) if old else set()
        todo = _unique([it for it in items if it.path not in have])
        if todo:
            size = self.backbone.image_size
            feats = torch.stack([self._encode(todo, view_transform(size), f"{self.dataset.name} view {v + 1}", v)
                                 for v in range(n_views)])
            save(path, _merge(old, _record(todo, feats), axis=1))
        out = load_features(path).select([it.path for it in items])
        out.features = out.features[:n_views]
        return out


def _unique(items):
    seen, out = set(), []
    for it in items:
        if it.path not in seen:
            seen.add(it.path)
            out.append(it)
    return out
