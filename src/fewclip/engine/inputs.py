"""What a method sees: its task (classes, few-shot train/val, optional inputs it asked for) and its
training batches, from one of two input paths with the same shape.

- `FeatureInputs` (methods with `needs = "features"`): everything comes from the feature store
  (stored test/few-shot features, augmented views, text features); the encoder never runs.
- `ImageInputs` (`needs = "images"`): the backbone runs inside training, so the method sees images.
  Train batches follow Dassl (SPEC §1, official-code-facts §1.0): RandomResizedCrop (the method's
  `crop_scale`, the backbone's interpolation: bicubic for CLIP) + flip + the backbone's
  normalisation (CLIP's mean/std for CLIP), shuffled each epoch, `drop_last` when the
  few-shot set holds at least one batch (unless the method keeps every batch: `DataNeeds.drop_last`
  False). The order and every image's augmentation are drawn from
  (seed, epoch, position), so an epoch's batches are the same whether the run was resumed or not
  and whatever the number of loader workers.

Evaluation runs in the training precision: a method trained in pure fp16 (`Method.is_half`) is
fed half inputs on every device, the CPU included (`FeatureInputs.logits`, `ImageInputs.logits`).

Both offer: `classes(ds, template_set, labels)`, `task(...)`, `batches(task, needs, seed)`,
`test(ds, labels)` and `logits(method, test, classes, precision)`.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.datasets import Dataset, Item, get_spec
from ..data.images import ImageItems
from ..errors import ConfigError
from ..methods import ClassSet, DataNeeds, Method
from ..paths import store_dir
from .features import Features, FeatureStore

EVAL_BATCH = 100  # Dassl's test batch size


def dassl_drop_last(n: int, batch_size: int) -> bool:
    """Dassl's train loader (`data_manager.build_data_loader`): `drop_last = len(data) >= batch_size`."""
    return n >= batch_size


@dataclass
class CellData:
    """The cell's data: the full dataset, the one it trains on (base-to-new: the base half), the
    base labels (None outside base-to-new) and the manifest's few-shot train/val items."""

    full: Dataset
    ds: Dataset
    base_labels: list[int] | None
    train: list[Item]
    val: list[Item]


@dataclass
class FeatureTask:
    """What a feature-level method sees. `views`, `test` and `full_val` are set only when the
    method asked for them (`DataNeeds`); `test` only under the official preset, for the official
    code's selection on test data, which metrics.json then records."""

    classes: ClassSet
    train: Features  # [N, d]
    views: Features | None  # [V, N, d]
    val: Features
    dataset: str
    shots: int
    seed: int
    preset: str
    hp: dict
    device: torch.device
    spec: Any  # the dataset's DatasetSpec
    test: Features | None = None
    full_val: Features | None = None  # the whole val split


@dataclass
class ImageSet:
    """Images of one split (test, or few-shot train/val): paths, labels, and loaders, with the
    backbone's preprocessing (`preprocess`; None: CLIP's at `image_size`)."""

    dataset: Dataset
    items: list[Item]
    image_size: int
    workers: int = 0
    preprocess: Any = None  # fewclip.models.backbone.Preprocess

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
        from ..data.transforms import test_transform

        return torch.utils.data.DataLoader(
            ImageItems(self.dataset, self.items, test_transform(self.transform_preprocess, batched=True)),
            batch_size=batch_size, shuffle=False, num_workers=self.workers, collate_fn=self.collate())

    @property
    def transform_preprocess(self):
        """What the transforms take: the `Preprocess`, or the bare input size (CLIP's preprocessing)."""
        return self.image_size if self.preprocess is None else self.preprocess

    def collate(self):
        """The DataLoader collate of the batched transforms: normalised with the preprocessing's mean/std."""
        from ..data import transforms

        if self.preprocess is None:
            return transforms.collate_normalized
        return functools.partial(transforms.collate_normalized, preprocess=self.preprocess)


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
    spec: Any  # the dataset's DatasetSpec


class _Inputs:
    """What both paths share: the feature stores of the cell's datasets (text features always
    come from there) and the classes built from them."""

    def __init__(self, spec, backbone_fn, device: torch.device):
        self.spec, self.device, self._backbone_fn = spec, device, backbone_fn
        self.stores: dict[str, FeatureStore] = {}

    def store(self, ds: Dataset) -> FeatureStore:
        if ds.name not in self.stores:
            self.stores[ds.name] = FeatureStore(Path(store_dir(self.spec.features, self.spec.key, ds.name)), ds,
                                                self._backbone_fn, self.spec.workers,
                                                model=self.spec.backbone, pretrained=self.spec.pretrained)
        return self.stores[ds.name]

    def classes(self, ds: Dataset, template_set: str, labels=None) -> ClassSet:
        """Hand-crafted text features of the classes (from the feature store's text.pt)."""
        store = self.store(ds)
        text, head = store.text(template_set), store.logit_head()
        cs = ClassSet(list(ds.classnames), text, torch.arange(len(ds.classnames)), ds.template,
                      logit_scale=head["scale"], logit_bias=head["bias"], openai_weights=head["openai_weights"])
        return cs if labels is None else cs.subset(labels)


class FeatureInputs(_Inputs):
    def task(self, method: Method, cell: CellData, classes: ClassSet, needs: DataNeeds) -> FeatureTask:
        spec = self.spec
        store = self.store(cell.full)
        train = store.fewshot(cell.train)  # manifest labels (base-to-new: already relabelled)
        train.labels = torch.tensor([it.label for it in cell.train])
        val = store.fewshot(cell.val) if cell.val else Features([], torch.zeros(0, dtype=torch.long),
                                                                train.features[:0])
        val.labels = torch.tensor([it.label for it in cell.val], dtype=torch.long)
        views = store.views(cell.train, needs.views) if needs.views else None
        if views is not None:
            views.labels = train.labels
        # selection on test data is the official code's, never the clean preset's
        test = self.test(cell.full, cell.base_labels) if needs.test_for_selection and spec.preset == "official" \
            else None
        full_val = keep_labels(store.fewshot(cell.full.val), cell.base_labels) if needs.full_val else None
        return FeatureTask(classes, train, views, val, spec.dataset, spec.shots, spec.seed, spec.preset, method.hp,
                           self.device, get_spec(spec.dataset), test, full_val)

    def batches(self, task: FeatureTask, needs: DataNeeds, seed: int):
        return view_batches(task, needs.batch_size, seed, bool(needs.drop_last))

    def test(self, ds: Dataset, labels=None) -> Features:
        return keep_labels(self.store(ds).test(), labels)

    def logits(self, method: Method, feats: Features, classes: ClassSet, precision: str = "auto") -> torch.Tensor:
        """[N, C] logits of the stored features, float on the CPU. A method trained in pure fp16 is
        given half image and text features, as the official fp16 CLIP hands them (Tip-Adapter's
        code scores fp16 `encode_image` outputs against fp16 `clip_weights`), on any device."""
        x = feats.raw if method.data_needs().reads_raw else feats.features
        if x is None:
            raise ConfigError(f"method {method.name} reads raw features, and these features have none")
        x, classes = x.to(self.device), classes.to(self.device)
        if method.is_half:
            x, classes = x.half(), dataclasses.replace(classes, text_features=classes.text_features.half())
        with torch.no_grad():
            return method.logits(x, classes).float().cpu()


def view_batches(task: FeatureTask, batch_size: int, seed: int, drop_last: bool = False):
    """Each epoch: every few-shot image once, as one of its stored augmented views, shuffled.

    With `drop_last` (a method trained by a Dassl trainer in its official code) the last incomplete batch
    is dropped when the set holds at least one full batch, as Dassl's train loader does;
    other official loaders keep it."""
    views = task.views.features
    n_views, n = views.shape[0], views.shape[1]
    stop = n - n % batch_size if drop_last and dassl_drop_last(n, batch_size) else n

    def batches(epoch: int):
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        order = torch.randperm(n, generator=g)
        pick = torch.randint(n_views, (n,), generator=g)
        for i in range(0, stop, batch_size):
            idx = order[i : i + batch_size]
            yield (views[pick[idx], idx].to(task.device), task.train.labels[idx].to(task.device))

    return batches


def keep_labels(feats: Features, labels) -> Features:
    """The rows of `feats` whose label is in `labels`, relabelled to positions in `labels`."""
    if labels is None:
        return feats
    keep = torch.isin(feats.labels, torch.as_tensor(labels))
    relabel = torch.full((int(feats.labels.max()) + 1,), -1, dtype=torch.long)
    relabel[torch.as_tensor(labels)] = torch.arange(len(labels))
    return Features([p for p, k in zip(feats.paths, keep.tolist()) if k], relabel[feats.labels[keep]],
                    feats.features[keep], None if feats.raw is None else feats.raw[keep])


def train_seed(aug_seed: int, i: int, item) -> int:
    """The seed of train image i's augmentation in the epoch drawn under `aug_seed`."""
    return aug_seed * 1_000_003 + i


class ImageInputs(_Inputs):
    def __init__(self, spec, backbone_fn, device: torch.device):
        self._backbone = None
        super().__init__(spec, lambda: self.backbone, device)
        self._load_backbone = backbone_fn

    @property
    def backbone(self):
        if self._backbone is None:
            self._backbone = self._load_backbone()
        return self._backbone

    def task(self, method: Method, cell: CellData, classes: ClassSet, needs: DataNeeds) -> ImageTask:
        spec, size, pre = self.spec, self.backbone.image_size, self.backbone.preprocess
        return ImageTask(self.backbone, classes.to(self.device),
                         ImageSet(cell.ds, list(cell.train), size, spec.workers, pre),
                         ImageSet(cell.ds, list(cell.val), size, spec.workers, pre),
                         spec.dataset, spec.shots, spec.seed, spec.preset, method.hp, self.device,
                         get_spec(spec.dataset))

    def batches(self, task: ImageTask, needs: DataNeeds, seed: int):
        """`epoch -> iterable of (images, labels)` on the device: Dassl's train loader (the last
        incomplete batch is dropped when the set holds a full one), or every batch kept when the
        method's `DataNeeds.drop_last` is False (an official loader with `drop_last=False`)."""
        from ..data.transforms import train_transform

        items, ds = task.train.items, task.train.dataset
        batch_size = needs.batch_size
        drop_last = needs.drop_last is not False and dassl_drop_last(len(items), batch_size)
        transform = train_transform(task.train.transform_preprocess, scale=tuple(needs.crop_scale), batched=True)
        collate = task.train.collate()
        device, workers = self.device, self.spec.workers

        def batches(epoch: int):
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            order = torch.randperm(len(items), generator=g).tolist()
            data = ImageItems(ds, items, transform, functools.partial(train_seed, seed * 100_003 + epoch))
            loader = torch.utils.data.DataLoader(
                data, batch_size=batch_size, sampler=order, drop_last=drop_last, collate_fn=collate,
                num_workers=workers, pin_memory=device.type == "cuda")
            for images, labels in loader:
                yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

        return batches

    def test(self, ds: Dataset, labels=None) -> ImageSet:
        items = list(ds.test)
        if labels is not None:
            relabel = {int(old): new for new, old in enumerate(labels)}
            items = [Item(it.path, relabel[it.label], it.classname) for it in items if it.label in relabel]
        return ImageSet(ds, items, self.backbone.image_size, self.spec.workers, self.backbone.preprocess)

    def logits(self, method: Method, test: ImageSet, classes: ClassSet, precision: str = "auto") -> torch.Tensor:
        """[N, C] logits of the test images, float on the CPU: autocast as training's (none for "auto"
        on a CPU), or, for a method trained in pure fp16, the half model on half images on any device
        (as the official fp16 models are evaluated)."""
        from tqdm import tqdm

        from .train import resolve_precision

        classes = classes.to(self.device)
        half = method.is_half
        dtype = None if half else resolve_precision(precision, self.device).autocast
        method.eval()
        out = []
        with torch.no_grad(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            for images, _ in tqdm(test.loader(), desc=f"{method.name} eval", unit="batch", leave=False):
                images = images.to(self.device)
                out.append(method.logits(images.half() if half else images, classes).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(classes.names))


def inputs_for(method_cls: type[Method], spec, backbone_fn, device: torch.device) -> _Inputs:
    """The input path of a method: its `needs`."""
    return (ImageInputs if method_cls.needs == "images" else FeatureInputs)(spec, backbone_fn, device)
