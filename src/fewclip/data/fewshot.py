"""Dassl-compatible few-shot sampling (SPEC §3) and the per-(dataset, K, seed) manifest.

Dassl seeds Python's `random` once, then calls `generate_fewshot_dataset` on train (K shots)
and on val (min(K, 4) shots) with the same stream: items grouped by label in file order,
labels visited in order of first appearance, `random.sample(group, K)` per label, and a class
with fewer than K items keeps all of them (no random draw). We use a private
`random.Random(seed)`, which yields the same stream without touching global state.

An image a split lists twice in one class counts once (Dassl would sample it twice): the
sample never holds the same image twice, a warning names the repeats, and the manifest records
them (`duplicate_images`, only when there are any, so other manifests stay as they were).
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
from pathlib import Path

from ..constants import PRESETS
from ..errors import ConfigError, DataError, FewclipError
from ..io import read_json, sha256_json, write_json
from .datasets import DATASETS, Dataset, Item, base_new_labels

MANIFEST_KEYS = ("dataset", "shots", "seed", "preset", "val_is_test", "train", "val", "short_classes", "sha256")
DUPLICATES = "duplicate_images"  # optional manifest key: {split: {label: [paths listed more than once]}}


def _group_by_label(items: list[Item]) -> dict[int, list[Item]]:
    groups: dict[int, list[Item]] = {}
    for it in items:
        groups.setdefault(it.label, []).append(it)
    return groups  # dicts keep insertion order = order of first appearance


def _sample(rng: random.Random, items: list[Item], k: int,
            what: str) -> tuple[list[Item], dict[int, int], dict[int, list[str]]]:
    """Dassl's generate_fewshot_dataset(items, num_shots=k, repeat=False) on the stream `rng`, each
    image of a class counted once; returns (sample, {label: n available}, {label: repeated paths})."""
    if k < 1:
        raise ConfigError(f"number of shots must be >= 1, got {k}")
    out: list[Item] = []
    short: dict[int, int] = {}
    repeated: dict[int, list[str]] = {}
    for label, listed in _group_by_label(items).items():
        group = list(dict.fromkeys(listed))  # first listing of each image, in file order
        if len(group) < len(listed):
            repeated[label] = [path for path, n in Counter(it.path for it in listed).items() if n > 1]
        if len(group) >= k:
            out.extend(rng.sample(group, k))
        else:
            out.extend(group)
            short[label] = len(group)
    if short:
        warnings.warn(
            f"{what}: {len(short)} class(es) have fewer than {k} images and keep all of them "
            f"(label: available = {short})",
            stacklevel=3,
        )
    if repeated:
        n = sum(len(paths) for paths in repeated.values())
        first = next(iter(repeated.values()))[0]
        warnings.warn(
            f"{what}: the split lists {n} image(s) more than once in the same class ({len(repeated)} class(es); "
            f"first: {first}); each counts once, and the manifest records them under '{DUPLICATES}'. Remove "
            "the repeated entries from the split file",
            stacklevel=3,
        )
    return out, short, repeated


def sample_fewshot(items: list[Item], k: int, seed: int) -> tuple[list[Item], dict]:
    """K items per label from a fresh `random.Random(seed)`; returns (items, {label: n_available})."""
    sample, short, _ = _sample(random.Random(seed), items, k, f"{k}-shot sample")
    return sample, short


def make_manifest(ds: Dataset, k: int, seed: int, preset: str = "clean") -> dict:
    """The few-shot train/val lists of one (dataset, K, seed) cell, with a content hash.

    ImageNet has no val split in the CoOp reader: `official` draws the few-shot val from
    ds.val (= the test set) and records val_is_test; `clean` draws it from the ImageNet train
    images not in the few-shot train set. Other datasets use ds.val under both presets.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    if not ds.train:
        raise DataError(f"{ds.name} has no train split; few-shot training uses one of the 11 source datasets")
    rng = random.Random(seed)
    train, short, repeated = _sample(rng, ds.train, k, f"{ds.name} train {k}-shot seed {seed}")
    spec = DATASETS.get(ds.name)
    val_pool, val_is_test = ds.val, False
    if spec is not None and spec.kind == "imagenet":
        if preset == "clean":
            chosen = set(train)
            val_pool = [it for it in ds.train if it not in chosen]
        else:
            val_is_test = True
    val, _, val_repeated = _sample(rng, val_pool, min(k, 4), f"{ds.name} val {min(k, 4)}-shot seed {seed}")
    manifest = {
        "dataset": ds.name,
        "shots": k,
        "seed": seed,
        "preset": preset,
        "val_is_test": val_is_test,
        "train": [[it.path, it.label] for it in train],
        "val": [[it.path, it.label] for it in val],
        "short_classes": {str(label): n for label, n in short.items()},  # JSON keys are strings
    }
    duplicates = {split: {str(label): paths for label, paths in found.items()}
                  for split, found in (("train", repeated), ("val", val_repeated)) if found}
    if duplicates:
        manifest[DUPLICATES] = duplicates
    manifest["sha256"] = sha256_json(manifest)
    return manifest


def base_new_manifest(manifest: dict, n_classes: int, part: str) -> dict:
    """Dassl order for base-to-new: sample on all classes first, then keep `part` and relabel."""
    relabel = {old: new for new, old in enumerate(base_new_labels(n_classes, part))}
    out = {key: manifest[key] for key in MANIFEST_KEYS if key != "sha256"}
    out["part"] = part
    for split in ("train", "val"):
        out[split] = [[p, relabel[lab]] for p, lab in manifest[split] if lab in relabel]
    out["short_classes"] = {str(relabel[int(lab)]): n for lab, n in manifest["short_classes"].items()
                            if int(lab) in relabel}
    if DUPLICATES in manifest:
        out[DUPLICATES] = {split: {str(relabel[int(lab)]): paths for lab, paths in found.items() if int(lab) in relabel}
                           for split, found in manifest[DUPLICATES].items()}
    out["sha256"] = sha256_json(out)
    return out


def write_manifest(path: str | Path, manifest: dict) -> None:
    _validate(manifest, Path(path))
    write_json(path, manifest)


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    try:
        manifest = read_json(path, "few-shot manifest")
    except FewclipError as err:
        raise DataError(f"{err}; delete it and rerun the sampling step") from err
    _validate(manifest, path)
    return manifest


def _validate(manifest, path: Path) -> None:
    def bad(why: str) -> DataError:
        return DataError(f"few-shot manifest {path} is invalid: {why}; delete it and rerun the sampling step")

    if not isinstance(manifest, dict):
        raise bad("not a JSON object")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise bad(f"missing keys {missing}")
    for split in ("train", "val"):
        rows = manifest[split]
        if not isinstance(rows, list) or not all(
            isinstance(r, list) and len(r) == 2 and isinstance(r[0], str) and isinstance(r[1], int)
            for r in rows
        ):
            raise bad(f"'{split}' must be a list of [path, label]")
    if not isinstance(manifest["short_classes"], dict):
        raise bad("'short_classes' must be an object {label: n_available}")
    if not isinstance(manifest.get(DUPLICATES, {}), dict):
        raise bad(f"'{DUPLICATES}' must be an object {{split: {{label: [paths]}}}}")
    body = {key: value for key, value in manifest.items() if key != "sha256"}
    if sha256_json(body) != manifest["sha256"]:
        raise bad("sha256 does not match its content (edited or truncated)")
