"""The feature store: each (backbone, dataset, split) is encoded once, stored fp16, and reused.

Layout under `root/{backbone_key}/{dataset}/`:
- `test.pt`     every test image (test transform)
- `fewshot.pt`  the union of all few-shot manifests' train + val images (test transform)
- `views.pt`    V augmented views (crop scale 0.5–1 + flip) of the union's train images
- `text.pt`     hand-crafted text features of the classes, one entry per template set
- `store.json`  what test/few-shot/text were computed from (their `source`), how many images were encoded
- `views.json`  the same for `views.pt` (the workflow writes the views in a job of their own, rule
                encode_views: more views re-run only that job and the cells that read views)

Image features are stored **raw** (the encoder's output before L2 normalisation, fp16):
cache models average unnormalised views and lpclip (the official logistic regression) fits raw
features (SPEC §2.3). `Features.features` is the normalised copy every other method reads, `Features.raw`
the raw one.

Every file records its `source`: the weights (sha256 of a local checkpoint, or the open_clip tag
and version), the preprocessing (the model's own: input size, mean/std, interpolation, resize
mode; store.json shows it as `preprocess`), the encoder precision, the data root, and a digest of the exact
image list (paths and labels of every split) and of the split file. A file whose source differs
from the current one is stale: it is recomputed (with a message saying what changed), never
reused, so a store is never stamped with weights or data it was not computed from.

Files are dicts of tensors and string lists, written atomically, read with weights_only=True.
Reading them needs torch only: jobs that use stored features never load a model. The expected
preprocessing of fewclip's own models is read from their config files; that of open_clip's models
from open_clip's tables (importing open_clip, creating nothing).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import FewclipError
from ..io import atomic_path, checkpoint_sha256, sha256_file, torch_load

VIEW_SEED = 0
STORE_FORMAT = 2  # 1: normalised features without a source; 2: raw features + source
# The preprocessing of fewclip.data.transforms (SPEC §1), with the model's own values (its
# `Preprocess`: input size, mean/std, interpolation, resize mode), recorded next to these.
PREPROCESS = {
    "test": "the model's resize (shortest: shorter side + center crop; squash; longest + pad) + its mean/std",
    "views": "RandomResizedCrop scale 0.5-1 (the model's interpolation) + horizontal flip + its mean/std",
    "view_seed": f"crc32(path) * 1009 + view + {VIEW_SEED}",
}
PRECISION = {"encoder": "fp32", "stored": "fp16 (raw, unnormalised)"}


@dataclass
class Features:
    paths: list[str]
    labels: torch.Tensor  # [N] long
    features: torch.Tensor  # [N, d] (or [V, N, d] for views), float32, L2-normalised
    raw: torch.Tensor | None = None  # the same rows before normalisation (the encoder's output)

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
        raw = None if self.raw is None else self.raw[..., rows, :]
        return Features(list(paths), self.labels[rows], self.features[..., rows, :], raw)


def normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def save(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: Path) -> dict:
    if not Path(path).is_file():
        raise FewclipError(f"feature file missing: {path}; run `fewclip encode` (or the workflow's encode rule) first")
    obj = torch_load(path, "feature file", "delete it and re-encode (fewclip encode, or the workflow's encode rule)")
    if not isinstance(obj, dict) or "features" not in obj and "templates" not in obj:
        raise FewclipError(f"{path} is not a fewclip feature file; delete it and re-encode")
    return obj


def load_features(path: Path) -> Features:
    obj = load(path)
    raw = obj["features"].float()
    return Features(obj["paths"], obj["labels"].long(), normalise(raw), raw)


# ------------------------------------------------------------------------------- provenance


def weights_identity(model: str, pretrained: str | None) -> str:
    """The weights, named without loading them (nor importing open_clip)."""
    from ..models.backbone import INIT_SEED, is_local_file

    if pretrained in (None, "", "none"):
        return f"random-init-seed{INIT_SEED}"
    if is_local_file(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FewclipError(f"checkpoint file not found: {path}; pass an existing file to --pretrained")
        return "sha256:" + checkpoint_sha256(path)
    return f"open_clip:{model}:{pretrained}"


def split_digest(dataset) -> str:
    """sha256 of the exact image list (paths and labels of every split, class names, template)
    and of the split file it was read from."""
    from ..data.datasets import get_spec

    h = hashlib.sha256()
    listing = {"classnames": list(dataset.classnames), "template": dataset.template,
               **{s: [[it.path, it.label] for it in dataset.split(s)] for s in ("train", "val", "test")}}
    h.update(json.dumps(listing, separators=(",", ":")).encode())
    spec = get_spec(dataset.name)
    split_file = Path(dataset.root) / spec.folder / spec.split_file
    if split_file.is_file():
        h.update(sha256_file(split_file).encode())
    return h.hexdigest()


def store_source(dataset, model: str, pretrained: str | None) -> dict:
    """What a store of `dataset` encoded by (model, pretrained) is computed from. The preprocessing
    is the model's (`expected_preprocess`: named without loading the model, as the weights are)."""
    from ..models.backbone import expected_preprocess

    try:
        open_clip_version = importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        open_clip_version = None
    return {
        "format": STORE_FORMAT, "model": model, "weights": weights_identity(model, pretrained),
        "open_clip": open_clip_version, "precision": PRECISION,
        "preprocess": {**PREPROCESS, "model": expected_preprocess(model, pretrained).as_dict()},
        "dataset": dataset.name, "data_root": str(Path(dataset.root).resolve()), "split": split_digest(dataset),
    }


def source_differences(old: dict | None, new: dict) -> list[str]:
    if not old:
        return ["no recorded source (written by an older fewclip)"]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]


def view_seed(view: int, i: int, item) -> int:
    """The seed of a stored view's augmentation: from (path, view), so a view's features do not
    depend on which other images are encoded."""
    return zlib.crc32(item.path.encode()) * 1009 + view + VIEW_SEED


def encode_items(backbone, dataset, items, transform, batch_size: int = 128, workers: int = 0,
                 desc: str = "encode", view: int | None = None) -> torch.Tensor:
    """[N, d] raw (unnormalised) image features of `items`, in order, with a progress bar.
    `transform` is a `batched` one (fewclip.data.transforms) of the backbone's preprocessing: it ends
    in an 8-bit tensor, normalised per batch with the backbone's mean/std."""
    from tqdm import tqdm

    from ..data.images import ImageItems
    from ..data.transforms import collate_normalized

    seed_of = None if view is None else functools.partial(view_seed, view)
    loader = torch.utils.data.DataLoader(
        ImageItems(dataset, items, transform, seed_of), batch_size=batch_size, num_workers=workers,
        shuffle=False, pin_memory=backbone.device.type == "cuda",
        collate_fn=functools.partial(collate_normalized, preprocess=backbone.preprocess),
    )
    out = [backbone.encode_images(images, normalize=False).cpu()
           for images, _ in tqdm(loader, desc=desc, unit="batch", leave=False)]
    return torch.cat(out) if out else torch.zeros(0, backbone.embed_dim)


def _record(items, feats, source: dict) -> dict:
    return {
        "paths": [it.path for it in items],
        "labels": torch.tensor([it.label for it in items], dtype=torch.long),
        "features": feats.half(),
        "source": source,
    }


def _merge(old: dict | None, new: dict, axis: int = 0) -> dict:
    if old is None:
        return new
    return {
        "paths": old["paths"] + new["paths"],
        "labels": torch.cat([old["labels"], new["labels"]]),
        "features": torch.cat([old["features"], new["features"]], dim=axis),
        "source": new["source"],
    }


class FeatureStore:
    """One (backbone, dataset) folder of the store. Its methods encode only what is missing,
    through `backbone()`, a callable that loads the backbone on first use (so a store that
    already holds everything never imports open_clip). `model`/`pretrained` name the weights
    the store must have been computed from; a stored file computed from anything else is
    recomputed."""

    def __init__(self, root: Path, dataset, backbone, workers: int = 0, batch_size: int = 128, *,
                 model: str, pretrained: str | None):
        self.root, self.dataset, self._backbone_fn = Path(root), dataset, backbone
        self._backbone = None
        self._logit_head = None  # text.pt's logit head, read once per store: every ClassSet asks
        self.workers, self.batch_size = workers, batch_size
        self.images_encoded = 0  # image-encoder calls made through this store (per image)
        self.source = store_source(dataset, model, pretrained)
        self.recomputed: list[str] = []  # files found stale and recomputed

    def _current(self, path: Path) -> dict | None:
        """The stored file if it was computed from this store's source, else None (stale: says why)."""
        if not path.is_file():
            return None
        obj = load(path)
        diff = source_differences(obj.get("source"), self.source)
        if diff:
            print(f"fewclip: {path} was computed from other inputs ({'; '.join(diff)}); recomputing it",
                  file=sys.stderr, flush=True)
            self.recomputed.append(path.name)
            return None
        return obj

    def write_manifest(self, extra: dict | None = None, name: str = "store.json") -> None:
        """store.json (test, few-shot and text features) or views.json (the augmented views): the
        source the files were computed from. The workflow's jobs depend on these two files."""
        from ..io import write_json

        write_json(self.root / name, {
            "model": self.source["model"], "sha256": self.source["weights"], "dataset": self.dataset.name,
            "preprocess": self.source["preprocess"]["model"], "source": self.source,
            "images_encoded": self.images_encoded, "recomputed": self.recomputed,
            **(extra or {}),
        })

    @property
    def backbone(self):
        """The backbone, loaded on first use; its preprocessing must be the one the source records
        (what every file of this store is stamped with)."""
        if self._backbone is None:
            backbone = self._backbone_fn()
            have, want = backbone.preprocess.as_dict(), self.source["preprocess"]["model"]
            if have != want:
                raise FewclipError(
                    f"backbone {self.source['model']} preprocesses images as {have}, but {want} was expected "
                    "for it (fewclip.models.backbone.expected_preprocess); the store would be stamped with "
                    "the wrong preprocessing, so nothing is encoded")
            self._backbone = backbone
        return self._backbone

    def _encode(self, items, transform, desc, view=None):
        self.images_encoded += len(items)
        return encode_items(self.backbone, self.dataset, items, transform, self.batch_size,
                            self.workers, desc, view)

    def text(self, template_set: str = "dataset") -> torch.Tensor:
        from ..models.templates import class_text_features

        path = self.root / "text.pt"
        obj = self._current(path) or {"classnames": list(self.dataset.classnames), "templates": {},
                                      "source": self.source}
        if obj["classnames"] != list(self.dataset.classnames):
            raise FewclipError(f"{path} was encoded for other class names; delete it and re-encode")
        if template_set not in obj["templates"]:
            obj["templates"][template_set] = class_text_features(
                self.backbone, self.dataset.classnames, template_set, self.dataset.template).cpu()
            save(path, obj)
        return obj["templates"][template_set].float()

    def logit_head(self) -> dict:
        """The backbone's own logit scale and bias (and whether it holds OpenAI's weights), kept in
        text.pt beside the text features: feature-level methods score with them without loading
        the model. {"scale", "bias", "openai_weights"}."""
        if self._logit_head is not None:
            return self._logit_head
        path = self.root / "text.pt"
        obj = self._current(path) or {"classnames": list(self.dataset.classnames), "templates": {},
                                      "source": self.source}
        if "logit_head" not in obj:
            bb = self.backbone
            obj["logit_head"] = {"scale": bb.logit_scale, "bias": bb.logit_bias, "openai_weights": bb.openai_weights}
            save(path, obj)
        self._logit_head = obj["logit_head"]
        return self._logit_head

    def test(self) -> Features:
        from ..data.transforms import test_transform

        path = self.root / "test.pt"
        if self._current(path) is None:
            items = self.dataset.test
            feats = self._encode(items, test_transform(self.backbone.preprocess, batched=True), f"{self.dataset.name} test")
            save(path, _record(items, feats, self.source))
        return load_features(path)

    def fewshot(self, items) -> Features:
        """Test-transform features of the few-shot train/val `items` (encoding any not yet stored)."""
        from ..data.transforms import test_transform

        path = self.root / "fewshot.pt"
        old = self._current(path)
        have = set(old["paths"]) if old else set()
        todo = _unique([it for it in items if it.path not in have])
        if todo:
            feats = self._encode(todo, test_transform(self.backbone.preprocess, batched=True), f"{self.dataset.name} few-shot")
            save(path, _merge(old, _record(todo, feats, self.source)))
        return load_features(path).select([it.path for it in items])

    def views(self, items, n_views: int) -> Features:
        """[V, N, d] augmented-view features of the few-shot train `items`."""
        from ..data.transforms import view_transform

        path = self.root / "views.pt"
        old = self._current(path)
        if old is not None and old["features"].shape[0] < n_views:  # fewer views than asked: stale
            print(f"fewclip: {path} holds {old['features'].shape[0]} views, {n_views} are needed; recomputing it",
                  file=sys.stderr, flush=True)
            self.recomputed.append(path.name)
            old = None
        have = set(old["paths"]) if old else set()
        todo = _unique([it for it in items if it.path not in have])
        if todo:
            pre = self.backbone.preprocess
            feats = torch.stack([self._encode(todo, view_transform(pre, batched=True), f"{self.dataset.name} view {v + 1}", v)
                                 for v in range(n_views)])
            save(path, _merge(old, _record(todo, feats, self.source), axis=1))
        out = load_features(path).select([it.path for it in items])
        out.features, out.raw = out.features[:n_views], out.raw[:n_views]
        return out


def _unique(items):
    seen, out = set(), []
    for it in items:
        if it.path not in seen:
            seen.add(it.path)
            out.append(it)
    return out
