"""Everything a cell needs, checked once before any work (`validate_spec`): a bad cell is refused
with one clear error and leaves nothing behind. The result (`Checked`) is what the run uses."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..constants import MAX_SEED, PROTOCOLS
from ..data.datasets import Dataset, base_new_split, get_spec, load_dataset
from ..data.fewshot import make_manifest, read_manifest
from ..errors import ConfigError, DataError
from ..io import sha256_json
from ..methods import Method, get_method, resolve_hparams
from .device import check_device_name
from .rundir import check_owner, check_writable
from .spec import RunSpec


@dataclass
class Checked:
    """A cell that passed every check: its method class, resolved hyper-parameters, dataset and manifest."""

    cls: type[Method]
    hp: dict[str, Any]
    full: Dataset
    manifest: dict


@functools.lru_cache(maxsize=8)
def cached_dataset(name: str, data_root: str) -> Dataset:
    """A dataset's lists, read once per process: validation and the run (and the cells of one
    `fewclip run` batch) share them, so an ImageNet listing is not walked several times."""
    return load_dataset(name, data_root)


def validate_spec(spec: RunSpec) -> Checked:
    """Refuse a cell that cannot run: bad seed/shots/device, unknown names, bad hyper-parameter
    values, --eval or --cross-dataset without DG, a target named twice or the source as a
    cross-dataset target, missing or empty data (the source, every DG and cross-dataset target, the
    few-shot val split of a method that chooses on it), a manifest that does not fit,
    hyper-parameters other than the workflow planned, an --out that is a file, not writable, or
    another cell's run."""
    if spec.protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{spec.protocol}'; valid: {', '.join(PROTOCOLS)}")
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or not 0 <= spec.seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer 0..{MAX_SEED}, got {spec.seed!r}")
    if isinstance(spec.shots, bool) or not isinstance(spec.shots, int) or spec.shots < 1:
        raise ConfigError(f"shots must be a positive integer (K images per class), got {spec.shots!r}")
    check_device_name(spec.device)
    cls = get_method(spec.method)
    get_spec(spec.dataset)
    for t in [*spec.evals, *spec.cross_dataset]:
        get_spec(t)
    if spec.evals and spec.protocol != "dg":
        raise ConfigError(f"--eval {' '.join(spec.evals)}: evaluation targets are for --protocol dg "
                          f"(this cell is --protocol {spec.protocol}); drop --eval or use --protocol dg")
    _check_cross_dataset(spec)
    problem = cls.tower_problem(spec.backbone)
    if problem:
        raise ConfigError(f"--method {spec.method} --backbone {spec.backbone}: {problem}")
    hp = resolve_hparams(cls, spec.dataset, spec.shots, spec.preset, spec.overrides, spec.protocol)
    if spec.expect_hparams and sha256_json(hp) != spec.expect_hparams:
        raise ConfigError(
            f"{spec.method} {spec.dataset} {spec.shots}-shot seed {spec.seed}: this run resolves other "
            "hyper-parameters than the workflow planned (fewclip or a plugin changed after Snakemake read the "
            "config); rerun snakemake so that it plans again (`fewclip plan` shows what it will run)")
    out = Path(spec.out)
    check_writable(out)
    check_owner(spec.identity(), out)
    if not Path(spec.data_root).is_dir():
        raise DataError(f"data root {spec.data_root} does not exist; pass the folder that holds the datasets "
                        "(the layout of docs/data.md) to --data-root, or prepare it with `fewclip download`")
    full = cached_dataset(spec.dataset, spec.data_root)
    check_not_empty(full.name, full.test, "test")
    if spec.protocol == "base2new":
        n_base = len(base_new_split(full, "base").classnames)
        check_not_empty(full.name, [it for it in full.test if it.label < n_base], "base-class test")
        check_not_empty(full.name, [it for it in full.test if it.label >= n_base], "new-class test")
    if spec.manifest:
        manifest = read_manifest(spec.manifest)
        _check_manifest_fits(manifest, spec, full)
    else:
        manifest = make_manifest(full, spec.shots, spec.seed, spec.preset)
    _check_fewshot_val(cls, hp, spec, full, manifest)
    for t in spec.evals:
        target = cached_dataset(t, spec.data_root)
        check_not_empty(target.name, target.test, f"test (DG target of {spec.dataset})")
        if target.imagenet_index is None and len(target.classnames) != len(full.classnames):
            raise ConfigError(f"DG target {target.name} has {len(target.classnames)} classes, the source "
                              f"{full.name} {len(full.classnames)}, and no index map between them; a dataset "
                              "with classes of its own is a cross-dataset target (`cross_dataset` in the "
                              "config, `fewclip run --cross-dataset`)")
    for t in spec.cross_dataset:
        try:
            target = cached_dataset(t, spec.data_root)
        except DataError as err:
            raise DataError(f"cross-dataset target {t} of {spec.dataset}: {err}") from err
        check_not_empty(target.name, target.test, f"test (cross-dataset target of {spec.dataset})")
    return Checked(cls, hp, full, manifest)


def _check_cross_dataset(spec: RunSpec) -> None:
    """Cross-dataset targets: a dg cell's, each named once, none of them the source or a DG target."""
    if not spec.cross_dataset:
        return
    if spec.protocol != "dg":
        raise ConfigError(f"--cross-dataset {' '.join(spec.cross_dataset)}: cross-dataset targets are evaluated "
                          f"by the model a --protocol dg cell trains (this cell is --protocol {spec.protocol}); "
                          "drop --cross-dataset or use --protocol dg")
    if spec.dataset in spec.cross_dataset:
        raise ConfigError(f"--cross-dataset {spec.dataset}: {spec.dataset} is the source this cell trains on "
                          "(its test split is the cell's own result); name other datasets")
    for t in spec.cross_dataset:
        if t in spec.evals:
            raise ConfigError(f"{t} is both a DG target (--eval: the source's classes) and a cross-dataset "
                              "target (--cross-dataset: its own classes); name it once")
        if spec.cross_dataset.count(t) > 1:
            raise ConfigError(f"--cross-dataset names {t} twice")


def _check_fewshot_val(cls: type[Method], hp: dict, spec: RunSpec, full: Dataset, manifest: dict) -> None:
    """A method that chooses something on the few-shot val split (`DataNeeds.fewshot_val`) needs
    one that is not empty: refused here, before anything is trained or written."""
    why = cls(hp).data_needs().fewshot_val
    if not why:
        return
    val = manifest["val"]
    if spec.protocol == "base2new":  # the cell trains and selects on the base classes only
        n_base = len(base_new_split(full, "base").classnames)
        val = [row for row in val if row[1] < n_base]
    if not val:
        raise ConfigError(
            f"{cls.name} on {spec.dataset} {spec.shots}-shot seed {spec.seed}: the few-shot val split is empty "
            f"({full.name} lists {len(full.val)} val images), and {cls.name} needs it: {why}")


def check_not_empty(dataset: str, items, split: str) -> None:
    if len(items) == 0:
        raise DataError(f"the {split} split of {dataset} is empty: there is nothing to evaluate on (a top-1 "
                        f"over 0 images means nothing); check the dataset's split file under the data root")


def _check_manifest_fits(manifest: dict, spec: RunSpec, ds: Dataset) -> None:
    if (manifest["dataset"], manifest["shots"], manifest["seed"]) != (spec.dataset, spec.shots, spec.seed):
        raise ConfigError(f"manifest {spec.manifest} is for {manifest['dataset']} {manifest['shots']}-shot seed "
                          f"{manifest['seed']}, not for this cell ({spec.dataset} {spec.shots}-shot seed {spec.seed})")
    n = len(ds.classnames)
    for split in ("train", "val"):
        bad = [lab for _, lab in manifest[split] if not 0 <= lab < n]
        if bad:
            raise DataError(f"few-shot manifest {spec.manifest}: '{split}' has label {bad[0]}, but {ds.name} has "
                            f"{n} classes (0..{n - 1}); delete it and rerun the sampling step (`fewclip split`)")
