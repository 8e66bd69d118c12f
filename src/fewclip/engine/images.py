"""The image path of a grid cell (prompt methods): the backbone runs inside training, so the
method sees images, not stored features. The feature-level twin is `run.FeatureInputs`.

Evaluation runs in the training precision: autocast as training's, or, for a method trained in
pure fp16 (`official` on a GPU), the half model on half images.

Train batches follow Dassl (SPEC §1, official-code-facts §1.0): RandomResizedCrop(scale
0.08–1, bicubic) + flip + CLIP normalisation, shuffled each epoch, `drop_last` when the few-shot
set holds at least one batch. The order and every image's augmentation are drawn from
(seed, epoch, position), so an epoch's batches are the same whether the run was resumed or not
and whatever the number of loader workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.datasets import Dataset, Item, get_spec
from ..methods import ClassSet, Method
from .features import FeatureStore, ImageItems

EVAL_BATCH = 100  # Dassl's test batch size


class _Images(ImageItems):
    """(image, label) of `items` through `transform`; with `aug_seed`, image i's random
    augmentation is drawn under the seed (aug_seed, i)."""

    def __init__(self, dataset: Dataset, items: list[Item], transform, aug_seed: int | None = None):
        super().__init__(dataset, items, transform)
        self.aug_seed = aug_seed

    def seed(self, i: int, item) -> int | None:
        return None if self.aug_seed is None else self.aug_seed * 1_000_003 + i


@dataclass
class ImageSet:
    """Images of one split (test, or few-shot train/val): paths, labels, and loaders."""

    dataset: Dataset
    items: list[Item]
    image_size: int
    workers: int = 0

    @property
    def paths(self) -> list[str]:
        return [it.path for it in self.items]

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([it.label for it in self.items], dtype=torch.long)

    def __len__(self):
        return len(self.items)

    def loader(self, batch_size: int = EVAL_BATCH):
        """Batches of (images, labels) with the test transform, in order."""
        from ..data.transforms import collate_normalized, test_transform

        return torch.utils.data.DataLoader(
            _Images(self.dataset, self.items, test_transform(self.image_size, batched=True)), batch_size=batch_size,
            shuffle=False, num_workers=self.workers, collate_fn=collate_normalized)


@dataclass
class ImageTask:
    """What an image-level method sees in `setup`: the frozen backbone, the training classes
    (on the device), the few-shot train/val images and the cell."""

    backbone: Any  # fewclip.models.backbone.Backbone
    classes: ClassSet
    train: ImageSet
    val: ImageSet
    dataset: str
    shots: int
    seed: int
    preset: str
    hp: dict
    device: torch.device
    spec: Any


def _classes_to(classes: ClassSet, device) -> ClassSet:
    ti = None if classes.train_index is None else classes.train_index.to(device)
    return ClassSet(classes.names, classes.text_features.to(device), ti, classes.template)


def autocast_dtype(hp: dict, device: torch.device):
    """The evaluation autocast dtype: as training's (`precision` hp), none on the CPU and none
    for pure fp16 (a half method is evaluated in half, as the official fp16 models are)."""
    from .train import resolve_precision

    return resolve_precision(hp.get("precision", "auto"), device).autocast


class ImageInputs:
    def __init__(self, spec, ds: Dataset, backbone_fn, device):
        self.spec, self.device, self._backbone_fn = spec, device, backbone_fn
        self._backbone = None
        self.root = Path(spec.features or "results/features") / spec.key
        self.stores: dict[str, FeatureStore] = {}
        self.hp: dict = {}

    @property
    def backbone(self):
        if self._backbone is None:
            self._backbone = self._backbone_fn()
        return self._backbone

    def store(self, ds: Dataset) -> FeatureStore:
        if ds.name not in self.stores:
            self.stores[ds.name] = FeatureStore(self.root / ds.name, ds, lambda: self.backbone, self.spec.workers,
                                                model=self.spec.backbone, pretrained=self.spec.pretrained)
        return self.stores[ds.name]

    def classes(self, ds: Dataset, template_set: str, labels=None) -> ClassSet:
        """Hand-crafted text features of the classes (from the feature store's text.pt)."""
        text = self.store(ds).text(template_set)
        cs = ClassSet(list(ds.classnames), text, torch.arange(len(ds.classnames)), ds.template)
        return cs if labels is None else cs.subset(labels)

    def task(self, method: Method, ds: Dataset, classes: ClassSet, train_items: list[Item],
             val_items: list[Item], manifest: dict, hp: dict) -> ImageTask:
        self.hp = hp
        size = self.backbone.image_size
        return ImageTask(self.backbone, _classes_to(classes, self.device),
                         ImageSet(ds, list(train_items), size, self.spec.workers),
                         ImageSet(ds, list(val_items), size, self.spec.workers),
                         self.spec.dataset, self.spec.shots, self.spec.seed, self.spec.preset, hp, self.device,
                         get_spec(self.spec.dataset))

    def batches(self, task: ImageTask, hp: dict, seed: int):
        """`epoch -> iterable of (images, labels)` on the device (Dassl's train loader, in both
        presets: the last incomplete batch is dropped when the set holds a full one)."""
        from ..data.transforms import collate_normalized, train_transform
        from .train import dassl_drop_last

        items, ds = task.train.items, task.train.dataset
        batch_size = int(hp["batch_size"])
        drop_last = dassl_drop_last(len(items), batch_size)
        transform = train_transform(task.train.image_size, scale=(float(hp.get("crop_scale_min", 0.08)), 1.0),
                                    batched=True)
        device = self.device

        def batches(epoch: int):
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            order = torch.randperm(len(items), generator=g).tolist()
            data = _Images(ds, items, transform, aug_seed=seed * 100_003 + epoch)
            loader = torch.utils.data.DataLoader(
                data, batch_size=batch_size, sampler=order, drop_last=drop_last, collate_fn=collate_normalized,
                num_workers=self.spec.workers, pin_memory=device.type == "cuda")
            for images, labels in loader:
                yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

        return batches

    def test(self, ds: Dataset, labels=None) -> ImageSet:
        items = list(ds.test)
        if labels is not None:
            relabel = {int(old): new for new, old in enumerate(labels)}
            items = [Item(it.path, relabel[it.label], it.classname) for it in items if it.label in relabel]
        return ImageSet(ds, items, self.backbone.image_size, self.spec.workers)

    def logits(self, method: Method, test: ImageSet, classes: ClassSet) -> torch.Tensor:
        """[N, C] logits of the test images, float on the CPU."""
        from tqdm import tqdm

        from .train import is_half

        classes = _classes_to(classes, self.device)
        half = is_half(method)  # trained in pure fp16: evaluated in fp16 (images fed as half)
        dtype = None if half else autocast_dtype(self.hp or method.hp, self.device)
        method.eval()
        out = []
        with torch.no_grad(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            for images, _ in tqdm(test.loader(), desc=f"{method.name} eval", unit="batch", leave=False):
                images = images.to(self.device)
                out.append(method.logits(images.half() if half else images, classes).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(classes.names))
