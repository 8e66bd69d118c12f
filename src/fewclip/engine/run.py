"""One grid cell: manifest → inputs (stored features or images) → fit → predictions → metrics.json.

The run directory (DESIGN.md) gets `predictions.parquet`, `checkpoint.pt` for methods with
state, and `metrics.json` last: a directory without metrics.json is unfinished. Extra
evaluations of the same fitted model (DG targets, base-to-new's new classes) go to
`eval_{target}/` with the same two files.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..data.datasets import Dataset, Item, base_new_split, get_spec, load_dataset
from ..data.fewshot import base_new_manifest, make_manifest, read_manifest
from ..errors import ConfigError, DataError, RunDirError
from ..io import atomic_path, sha256_json, write_json
from ..methods import ClassSet, Method, NotApplicable, get_method, resolve_hparams
from .features import Features, FeatureStore
from .train import TrainConfig, train

PROTOCOLS = ("fewshot", "base2new", "dg")


@dataclass
class RunSpec:
    data_root: str
    dataset: str
    method: str
    backbone: str  # open_clip model name
    out: str  # the run directory
    shots: int
    seed: int
    pretrained: str = "openai"
    backbone_key: str | None = None
    preset: str = "clean"
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    protocol: str = "fewshot"
    evals: list[str] = field(default_factory=list)  # DG target datasets (protocol dg)
    manifest: str | None = None  # a manifest written by `fewclip split`; sampled here when absent
    features: str | None = None  # feature-store root; default: results/features
    config_hash: str = ""
    expect_hparams: str | None = None  # the workflow's planned digest of the resolved hparams (fewclip.plan)
    workers: int = 0

    @property
    def key(self) -> str:
        return self.backbone_key or self.backbone


# ------------------------------------------------------------------------------- inputs


@dataclass
class FeatureTask:
    """What a feature-level method sees. `test` is only set for the official preset's
    selection on test data (Tip-Adapter), and says so in metrics.json."""

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
    spec: Any
    test: Features | None = None
    full_val: Features | None = None  # the whole val split, when hp search_split == "full_val"


def _items(manifest: dict, split: str, ds: Dataset) -> list[Item]:
    return [Item(p, int(lab), ds.classnames[int(lab)]) for p, lab in manifest[split]]


class FeatureInputs:
    def __init__(self, spec: RunSpec, ds: Dataset, backbone_fn, device):
        root = Path(spec.features or "results/features") / spec.key
        self.spec, self.device, self.backbone_fn = spec, device, backbone_fn
        self.stores: dict[str, FeatureStore] = {}
        self.root = root
        self.store(ds)

    def store(self, ds: Dataset) -> FeatureStore:
        if ds.name not in self.stores:
            self.stores[ds.name] = FeatureStore(self.root / ds.name, ds, self.backbone_fn, self.spec.workers,
                                                model=self.spec.backbone, pretrained=self.spec.pretrained)
        return self.stores[ds.name]

    def classes(self, ds: Dataset, template_set: str, labels=None) -> ClassSet:
        text = self.store(ds).text(template_set)
        cs = ClassSet(list(ds.classnames), text, torch.arange(len(ds.classnames)), ds.template)
        return cs if labels is None else cs.subset(labels)

    def test(self, ds: Dataset, labels=None) -> Features:
        return _keep_labels(self.store(ds).test(), labels)

    def logits(self, method: Method, feats: Features, classes: ClassSet) -> torch.Tensor:
        x = feats.raw if getattr(method, "reads_raw", False) else feats.features  # lpclip: raw features
        if x is None:
            raise ConfigError(f"method {method.name} reads raw features, and these features have none")
        with torch.no_grad():
            return method.logits(x.to(self.device), _to(classes, self.device)).float().cpu()


def _to(classes: ClassSet, device) -> ClassSet:
    ti = None if classes.train_index is None else classes.train_index.to(device)
    return ClassSet(classes.names, classes.text_features.to(device), ti, classes.template)


def view_batches(task: FeatureTask, batch_size: int, seed: int):
    """Each epoch: every few-shot image once, as one of its stored augmented views, shuffled.

    With hp `drop_last` (CLIP-Adapter under `official`: a Dassl trainer) the last incomplete
    batch is dropped when the set holds at least one full batch, as Dassl's train loader does
    (`drop_last = len(data) >= batch_size`); Tip-Adapter-F's own loader keeps it."""
    from .train import dassl_drop_last

    views = task.views.features
    n_views, n = views.shape[0], views.shape[1]
    stop = n - n % batch_size if task.hp.get("drop_last", False) and dassl_drop_last(n, batch_size) else n

    def batches(epoch: int):
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        order = torch.randperm(n, generator=g)
        pick = torch.randint(n_views, (n,), generator=g)
        for i in range(0, stop, batch_size):
            idx = order[i : i + batch_size]
            yield (views[pick[idx], idx].to(task.device), task.train.labels[idx].to(task.device))

    return batches


# ------------------------------------------------------------------------------- running


def _provenance(spec: RunSpec, manifest: dict, backbone_sha: str, device: torch.device) -> dict:
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    return {
        "fewclip_version": __version__,
        "git_commit": _git_commit(),
        "config_hash": spec.config_hash or sha256_json(_spec_identity(spec)),
        "manifest_sha256": manifest["sha256"],
        "backbone_sha256": backbone_sha,
        "torch": torch.__version__,
        "open_clip": version("open_clip_torch"),
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        # where it ran: the host, the SLURM job (None outside SLURM), the GPU the pool or SLURM gave it
        "host": platform.node(),
        **machine_fingerprint(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _spec_identity(spec: RunSpec) -> dict:
    return {k: getattr(spec, k) for k in ("dataset", "method", "backbone", "pretrained", "shots", "seed",
                                          "preset", "overrides", "protocol")}


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write_eval(out: Path, ds: Dataset, paths: list[str], labels: torch.Tensor, logits: torch.Tensor | None,
                metrics: dict, report=None) -> dict:
    import pandas as pd

    _check_not_empty(ds.name, paths, str(metrics.get("eval_split", "test")))
    if logits is None:
        metrics.update(top1=None, n_test=len(paths))
    else:
        pred = logits.argmax(1)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct = pred == labels
        frame = pd.DataFrame({"path": paths, "label": labels.numpy(), "pred": pred.numpy(),
                              "correct": correct.numpy(), "top5": [r for r in top5.numpy().tolist()]})
        with atomic_path(out / "predictions.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
        metrics.update(top1=100.0 * correct.float().mean().item() if len(paths) else 0.0, n_test=len(paths))
        if report is not None:  # the number the official code reports (Tip-Adapter-F: a max)
            metrics.update(report(metrics["top1"]))
    write_json(out / "metrics.json", metrics)
    return metrics


def run_cell(spec: RunSpec) -> dict:
    """Fit one method on one cell and evaluate it; returns the main metrics.json content.

    Everything is checked first (`validate_spec`); the run directory is then locked and owned
    (`owned_run_dir`): results are written into a staging folder and published only when the
    whole cell (every DG target included) succeeded, so a failure leaves a previous finished run
    untouched and nothing that `fewclip collect` would count."""
    validate_spec(spec)
    with owned_run_dir(spec) as stage:
        metrics = _run_cell(spec, stage)
    return metrics


def _run_cell(spec: RunSpec, stage: Path) -> dict:
    if spec.protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{spec.protocol}'; valid: {', '.join(PROTOCOLS)}")
    cls = get_method(spec.method)
    get_spec(spec.dataset)
    for t in spec.evals:
        get_spec(t)
    hp = resolve_hparams(cls, spec.dataset, spec.shots, spec.preset, spec.overrides, spec.protocol)
    if spec.expect_hparams and sha256_json(hp) != spec.expect_hparams:
        raise ConfigError(
            f"{spec.method} {spec.dataset} {spec.shots}-shot seed {spec.seed}: this run resolves other "
            "hyper-parameters than the workflow planned (fewclip or a plugin changed after Snakemake read the "
            "config); rerun snakemake so that it plans again (`fewclip plan` shows what it will run)")
    out = Path(spec.out)
    device = _device(spec.device)
    torch.manual_seed(spec.seed)

    if not Path(spec.data_root).is_dir():
        raise DataError(f"data root {spec.data_root} does not exist; pass the folder that holds the datasets "
                        "(CoOp layout) to --data-root, or prepare it with `fewclip download`")
    full = _dataset(spec.dataset, spec.data_root)
    manifest = read_manifest(spec.manifest) if spec.manifest else make_manifest(full, spec.shots, spec.seed, spec.preset)
    if (manifest["dataset"], manifest["shots"], manifest["seed"]) != (spec.dataset, spec.shots, spec.seed):
        raise ConfigError(f"manifest {spec.manifest} is for {manifest['dataset']} {manifest['shots']}-shot seed "
                          f"{manifest['seed']}, not for this cell")
    base_labels = None
    ds = full
    if spec.protocol == "base2new":
        ds = base_new_split(full, "base")
        manifest = base_new_manifest(manifest, len(full.classnames), "base")
        base_labels = list(range(len(ds.classnames)))
    n_base = len(ds.classnames)

    backbone_info = {}

    def backbone_fn():
        bb = _cached_backbone(spec.backbone, spec.pretrained, str(device))
        backbone_info["sha256"] = bb.sha256
        return bb

    if cls.needs == "images":
        from .images import ImageInputs  # the image path: prompt methods

        inputs = ImageInputs(spec, full, backbone_fn, device)
    else:
        inputs = FeatureInputs(spec, full, backbone_fn, device)

    template_set = hp.get("templates", "dataset")
    train_items, val_items = _items(manifest, "train", ds), _items(manifest, "val", ds)
    classes = inputs.classes(full, template_set, base_labels)

    method = cls(hp).to(device)
    t0 = time.perf_counter()
    task = inputs.task(method, ds, classes, train_items, val_items, manifest, hp) if cls.needs == "images" \
        else _feature_task(inputs, full, classes, train_items, val_items, spec, hp, device, base_labels)
    info = dict(method.setup(task) or {})
    train_stats = {}
    if cls.trains:
        cfg = train_config(hp, {"method": cls.name, "backbone": spec.backbone, "pretrained": spec.pretrained,
                                "dataset": spec.dataset, "shots": spec.shots, "seed": spec.seed,
                                "protocol": spec.protocol, "hp": sha256_json(hp)})
        batches = inputs.batches(task, hp, spec.seed) if cls.needs == "images" \
            else view_batches(task, int(hp["batch_size"]), spec.seed)
        train_stats = train(method, batches, cfg, device, out / "train_state.pt",
                            on_epoch_end=getattr(method, "epoch_end", None) and (lambda e: method.epoch_end(task, e)),
                            desc=f"{cls.name} {spec.dataset} {spec.shots}-shot")
    info.update(method.finish(task) or {})
    train_seconds = time.perf_counter() - t0

    # evaluate on the source test split
    t1 = time.perf_counter()
    test = inputs.test(full, base_labels)
    logits = inputs.logits(method, test, classes)
    eval_seconds = time.perf_counter() - t1

    if any(p.requires_grad for p in method.parameters()) or len(method.state_dict()):
        with atomic_path(stage / "checkpoint.pt") as tmp:
            torch.save({"method": cls.name, "backbone": spec.backbone, "pretrained": spec.pretrained,
                        "hp": hp, "state": method.state_dict()}, tmp)
    if "sha256" not in backbone_info:
        backbone_info["sha256"] = _backbone_sha(spec)
    base = {
        "protocol": spec.protocol, "preset": spec.preset, "backbone": spec.backbone, "backbone_key": spec.key,
        "pretrained": spec.pretrained, "dataset": spec.dataset, "method": cls.name, "shots": spec.shots,
        "seed": spec.seed, "trainable_params": sum(p.numel() for p in method.parameters() if p.requires_grad),
        "epochs": int(hp.get("epochs", 0)) if cls.trains else 0, "train_seconds": train_seconds,
        "peak_mem_mb": _peak_mem_mb(device), "hparams": hp, "selected": info, "train": train_stats,
        "short_classes": manifest.get("short_classes", {}), "val_is_test": manifest.get("val_is_test", False),
        "provenance": _provenance(spec, manifest, backbone_info["sha256"], device), "status": "complete",
    }

    # extra evaluations first, the cell's own metrics.json last (it marks the cell finished)
    for target in _eval_targets(spec):
        t2 = time.perf_counter()
        if target == "new":
            new_labels = list(range(n_base, len(full.classnames)))
            tcls = inputs.classes(full, template_set, new_labels)
            tcls.train_index = None
            tds, tfeats = full, inputs.test(full, new_labels)
        else:
            tds = _dataset(target, spec.data_root)
            tcls, tfeats = _dg_classes(inputs, tds, full, template_set), inputs.test(tds)
        try:
            tlogits = inputs.logits(method, tfeats, tcls)
            na = None
        except NotApplicable as why:
            tlogits, na = None, str(why)
        m = {**base, "eval_dataset": tds.name, "eval_split": "new" if target == "new" else "test",
             "n_classes": len(tcls.names), "eval_seconds": time.perf_counter() - t2}
        if na:
            m["na_reason"] = na
        _write_eval(stage / f"eval_{target}", tds, tfeats.paths, tfeats.labels, tlogits, m)

    metrics = {**base, "eval_dataset": spec.dataset, "eval_split": "base" if spec.protocol == "base2new" else "test",
               "n_classes": n_base, "eval_seconds": eval_seconds}
    metrics = _write_eval(stage, full, test.paths, test.labels, logits, metrics, getattr(method, "report", None))
    _publish(stage, out)
    (out / "train_state.pt").unlink(missing_ok=True)
    return metrics


@functools.lru_cache(maxsize=2)
def _cached_backbone(name: str, pretrained: str, device: str):
    """Cells run in one process share their backbone (a frozen model: nothing leaks between cells)."""
    from ..models.backbone import load_backbone

    return load_backbone(name, pretrained, device)


def _eval_targets(spec: RunSpec) -> list[str]:
    if spec.protocol == "base2new":
        return ["new"]
    if spec.protocol == "dg":
        return list(spec.evals)
    if spec.evals:
        raise ConfigError("evaluation targets are for --protocol dg")
    return []


def _dg_classes(inputs, target: Dataset, source: Dataset, template_set: str) -> ClassSet:
    """A DG target's classifier: the target's own class names (text side); class-specific heads
    see where each target class sits among the source classes (A/R: their 200 ImageNet indices)."""
    cls = inputs.classes(target, template_set)
    if target.imagenet_index is not None:
        cls.train_index = torch.tensor(target.imagenet_index, dtype=torch.long)
    elif len(target.classnames) != len(source.classnames):
        raise ConfigError(f"DG target {target.name} has {len(target.classnames)} classes, the source "
                          f"{source.name} {len(source.classnames)}, and no index map between them")
    return cls


def _feature_task(inputs: FeatureInputs, full, classes, train_items, val_items, spec, hp, device, base_labels):
    store = inputs.store(full)
    train = store.fewshot(train_items)  # manifest labels (base-to-new: already relabelled)
    train.labels = torch.tensor([it.label for it in train_items])
    val = store.fewshot(val_items) if val_items else Features([], torch.zeros(0, dtype=torch.long), train.features[:0])
    val.labels = torch.tensor([it.label for it in val_items], dtype=torch.long)
    n_views = int(hp.get("views", 0))
    views = store.views(train_items, n_views) if n_views else None
    if views is not None:
        views.labels = train.labels
    test = inputs.test(full, base_labels) if spec.preset == "official" and hp.get("select_on_test", False) else None
    full_val = _keep_labels(store.fewshot(full.val), base_labels) if hp.get("search_split") == "full_val" else None
    return FeatureTask(classes, train, views, val, spec.dataset, spec.shots, spec.seed, spec.preset, hp, device,
                       get_spec(spec.dataset), test, full_val)


def _keep_labels(feats: Features, labels) -> Features:
    """The rows of `feats` whose label is in `labels`, relabelled to positions in `labels`."""
    if labels is None:
        return feats
    keep = torch.isin(feats.labels, torch.as_tensor(labels))
    relabel = torch.full((int(feats.labels.max()) + 1,), -1, dtype=torch.long)
    relabel[torch.as_tensor(labels)] = torch.arange(len(labels))
    return Features([p for p, k in zip(feats.paths, keep.tolist()) if k], relabel[feats.labels[keep]],
                    feats.features[keep], None if feats.raw is None else feats.raw[keep])


def train_config(hp: dict, identity: dict) -> TrainConfig:
    keys = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: hp[k] for k in keys if k in hp and k != "identity"}, identity=identity)


def _backbone_sha(spec: RunSpec) -> str:
    """The backbone identity without loading it: recorded by `fewclip encode` in the store."""
    path = Path(spec.features or "results/features") / spec.key / spec.dataset / "store.json"
    if path.is_file():
        return json.loads(path.read_text())["sha256"]
    return "unknown (features encoded without store.json)"


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


# ------------------------------------------------------------------------------- validation
# (issue 17) everything a cell needs is checked before any work, so a bad cell leaves nothing.

MAX_SEED = 2**32 - 1
DEVICE_NAMES = ("auto", "cpu", "cuda")


@functools.lru_cache(maxsize=8)
def _dataset(name: str, data_root: str) -> Dataset:
    """A dataset's lists, read once per process: validation and the run (and the cells of one
    `fewclip run` batch) share them, so an ImageNet listing is not walked several times."""
    return load_dataset(name, data_root)


def validate_spec(spec: RunSpec) -> None:
    """Refuse a cell that cannot run: bad seed/shots/device, unknown names, bad hyper-parameter
    values, --eval without DG, missing or empty data (the source and every DG target), a
    manifest that does not fit, an --out that is a file, not writable, or another cell's run."""
    if spec.protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{spec.protocol}'; valid: {', '.join(PROTOCOLS)}")
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or not 0 <= spec.seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer 0..{MAX_SEED}, got {spec.seed!r}")
    if isinstance(spec.shots, bool) or not isinstance(spec.shots, int) or spec.shots < 1:
        raise ConfigError(f"shots must be a positive integer (K images per class), got {spec.shots!r}")
    _check_device_name(spec.device)
    cls = get_method(spec.method)
    get_spec(spec.dataset)
    for t in spec.evals:
        get_spec(t)
    if spec.evals and spec.protocol != "dg":
        raise ConfigError(f"--eval {' '.join(spec.evals)}: evaluation targets are for --protocol dg "
                          f"(this cell is --protocol {spec.protocol}); drop --eval or use --protocol dg")
    resolve_hparams(cls, spec.dataset, spec.shots, spec.preset, spec.overrides, spec.protocol)
    out = Path(spec.out)
    _check_writable(out)
    _check_owner(spec, out)
    if not Path(spec.data_root).is_dir():
        raise DataError(f"data root {spec.data_root} does not exist; pass the folder that holds the datasets "
                        "(CoOp layout) to --data-root, or prepare it with `fewclip download`")
    full = _dataset(spec.dataset, spec.data_root)
    _check_not_empty(full.name, full.test, "test")
    if spec.protocol == "base2new":
        n_base = len(base_new_split(full, "base").classnames)
        _check_not_empty(full.name, [it for it in full.test if it.label < n_base], "base-class test")
        _check_not_empty(full.name, [it for it in full.test if it.label >= n_base], "new-class test")
    if spec.manifest:
        _check_manifest_fits(read_manifest(spec.manifest), spec, full)
    for t in spec.evals:
        target = _dataset(t, spec.data_root)
        _check_not_empty(target.name, target.test, f"test (DG target of {spec.dataset})")
        if target.imagenet_index is None and len(target.classnames) != len(full.classnames):
            raise ConfigError(f"DG target {target.name} has {len(target.classnames)} classes, the source "
                              f"{full.name} {len(full.classnames)}, and no index map between them")


def _check_device_name(name: str) -> None:
    base, _, index = str(name).partition(":")
    if base not in DEVICE_NAMES or (index and (base != "cuda" or not index.isdigit())):
        raise ConfigError(f"unknown device '{name}'; use cpu, cuda, cuda:N or auto")
    if index and torch.cuda.is_available() and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")


def _check_not_empty(dataset: str, items, split: str) -> None:
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


def _check_writable(out: Path) -> None:
    """--out must be a folder (or not exist yet) that this process can write; leaves nothing behind."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a run directory; choose another --out (a folder)")
    missing = []
    probe_parent = out
    while not probe_parent.exists():
        missing.append(probe_parent)
        if probe_parent.parent == probe_parent:
            break
        probe_parent = probe_parent.parent
    if probe_parent.exists() and not probe_parent.is_dir():
        raise RunDirError(f"--out {out}: {probe_parent} is a file, not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fewclip-probe.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise RunDirError(f"--out {out} is not writable ({err.strerror or err}); choose another --out "
                          "or fix its permissions") from err
    finally:
        for folder in missing:  # innermost first: what this check created goes again
            try:
                folder.rmdir()
            except OSError:
                break


RUN_IDENTITY = ("protocol", "preset", "backbone", "backbone_key", "pretrained", "dataset", "method", "shots", "seed")


def _identity(spec: RunSpec) -> dict:
    return {"protocol": spec.protocol, "preset": spec.preset, "backbone": spec.backbone, "backbone_key": spec.key,
            "pretrained": spec.pretrained, "dataset": spec.dataset, "method": spec.method, "shots": spec.shots,
            "seed": spec.seed}


def _check_owner(spec: RunSpec, out: Path) -> None:
    """A finished run of another cell in --out is never replaced."""
    path = out / "metrics.json"
    if not path.is_file():
        return
    try:
        theirs = json.loads(path.read_text())
        if not isinstance(theirs, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise RunDirError(f"--out {out} holds a metrics.json that cannot be read ({type(err).__name__}); it is "
                          f"not replaced: delete {out} if it is yours to discard, or choose another --out") from err
    mine = _identity(spec)
    diffs = [f"{k}={theirs.get(k)!r} (this cell: {v!r})" for k, v in mine.items()
             if k in theirs and theirs.get(k) != v]
    if diffs:
        raise RunDirError(f"--out {out} holds the finished run of another cell ({', '.join(diffs)}); it is not "
                          "replaced. Choose another --out, or delete that run directory first")


LOCK_NAME = ".fewclip-run.lock"
STAGE_NAME = ".incoming"


@contextlib.contextmanager
def owned_run_dir(spec: RunSpec):
    """Lock --out (one writer at a time), check its owner again under the lock, and yield a
    fresh staging folder inside it. On failure the staging folder goes, and so does an --out
    this call created, if it is empty; a previous finished run is never touched."""
    out = Path(spec.out)
    missing = []
    folder = out
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out / LOCK_NAME)
    stage = out / STAGE_NAME
    try:
        with lock:
            _check_owner(spec, out)
            if stage.exists():
                shutil.rmtree(stage)  # a killed run's leftovers
            stage.mkdir()
            try:
                yield stage
            finally:
                shutil.rmtree(stage, ignore_errors=True)
    finally:
        for folder in missing:
            try:
                folder.rmdir()  # only if empty: a failed first run leaves nothing
            except OSError:
                break


def _publish(stage: Path, out: Path) -> None:
    """Move a complete cell from its staging folder into --out, metrics.json last. The old
    metrics.json goes first: until the new one lands, the cell reads as unfinished."""
    new = {p.name for p in stage.iterdir()}
    (out / "metrics.json").unlink(missing_ok=True)
    for old in out.iterdir():
        if old.name in new or old.name in (LOCK_NAME, STAGE_NAME):
            continue
        if old.is_dir() and old.name.startswith("eval_"):
            shutil.rmtree(old)
        elif old.name in ("predictions.parquet", "checkpoint.pt"):
            old.unlink()
    for name in sorted(new - {"metrics.json"}):
        dest = out / name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(stage / name, dest)
    os.replace(stage / "metrics.json", out / "metrics.json")


class RunLock:
    """`{out}/.fewclip-run.lock`: an flock held for the run, holding the writer's pid and host.

    A second writer is refused and told who holds it. The kernel releases an flock when its
    process dies, so a lock left by a killed run is stale by construction: the next run takes
    it over (and says so)."""

    def __init__(self, path: Path):
        self.path, self.fd = Path(path), None

    def __enter__(self):
        import fcntl

        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                holder = self._holder()
                if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES) and not _alive(holder):
                    # a file system without flock (ENOLCK): fall back on the recorded pid and host
                    self.fd = None
                    self.path.write_text(json.dumps(_lock_record()))
                    return self
                who = (f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('started')}"
                       if holder else "a process that is just starting")
                raise RunDirError(
                    f"run directory {self.path.parent} is being written by another fewclip process ({who}); "
                    f"wait for it to finish or stop it. If that process is gone (another host), delete {self.path}"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released (and removed) it between our open and flock
                os.close(fd)
                continue
            stale = self._holder()
            if stale and (stale.get("pid"), stale.get("host")) != (os.getpid(), platform.node()):
                print(f"fewclip: taking over the stale lock {self.path} of pid {stale.get('pid')} on host "
                      f"{stale.get('host')} (that process is gone)", file=sys.stderr)
            me = json.dumps(_lock_record()).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, me, 0)
            self.fd = fd
            return self
        raise RunDirError(f"could not lock {self.path}: other processes keep taking it; retry")

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def __exit__(self, *exc):
        try:
            self.path.unlink(missing_ok=True)
        finally:
            if self.fd is not None:
                os.close(self.fd)
            self.fd = None
        return False


def _lock_record() -> dict:
    return {"pid": os.getpid(), "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _alive(holder: dict | None) -> bool:
    """Whether a lock's recorded holder may still run: unknown hosts count as alive."""
    if not holder:
        return False
    if holder.get("host") != platform.node():
        return True
    try:
        os.kill(int(holder.get("pid")), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def machine_fingerprint() -> dict:
    """What decides the floating-point kernels: results are byte-identical only for the same
    CPU model (and BLAS), GPU and library versions."""
    return {"cpu": _cpu_model(), "blas": _blas()}


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return f"{platform.processor() or 'unknown'} ({platform.machine()})"


@functools.lru_cache(maxsize=1)
def _blas() -> str:
    try:
        config = torch.__config__.show()
    except Exception:  # noqa: BLE001 - provenance must never fail a run
        return "unknown"
    found = [line.split("=", 1)[1].strip().rstrip(",") for line in config.replace(", ", "\n").splitlines()
             if line.strip().startswith(("BLAS_INFO=", "LAPACK_INFO="))]
    extra = [w for w in ("MKL", "OpenBLAS", "oneDNN") if f"{w}" in config and "BLAS_INFO" not in config]
    return ", ".join(dict.fromkeys(found + extra)) or "unknown"
