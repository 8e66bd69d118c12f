"""One grid cell: manifest → inputs (stored features or images) → fit → predictions → metrics.json.

The run directory (DESIGN.md) gets `predictions.parquet`, `checkpoint.pt` for methods with
state, and `metrics.json` last: a directory without metrics.json is unfinished. Extra
evaluations of the same fitted model (DG targets, base-to-new's new classes) go to
`eval_{target}/` with the same two files.

The steps live beside this module, one concern each: `validate` (everything checked once, before
any work), `rundir` (lock, staging, publishing), `inputs` (the two input paths), `train` (the one
training loop), `evaluate` (test split and extra targets), `provenance` (where and with what).
The engine asks the method what it needs (`Method.data_needs`) and never reads its settings.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import torch

from ..constants import SHARED_ACROSS
from ..data.datasets import Item, base_new_split
from ..data.fewshot import base_new_manifest
from ..io import atomic_path, sha256_json
from ..methods import Method
from ..paths import store_dir
from .device import resolve_device
from .evaluate import evaluate_targets, write_eval
from .features import weights_identity
from .inputs import CellData, inputs_for
from .provenance import peak_mem_mb, provenance
from .rundir import owned_run_dir, publish
from .spec import RunSpec
from .train import TrainConfig, train
from .validate import Checked, validate_spec

__all__ = ["RunSpec", "run_cell", "validate_spec", "train_config"]


def run_cell(spec: RunSpec) -> dict:
    """Fit one method on one cell and evaluate it; returns the main metrics.json content.

    Everything is checked first (`validate_spec`); the run directory is then locked and owned
    (`owned_run_dir`): results are written into a staging folder and published only when the
    whole cell (every extra evaluation included) succeeded, so a failure leaves a previous
    finished run untouched and nothing that `fewclip collect` would count."""
    checked = validate_spec(spec)
    with owned_run_dir(spec.out, spec.identity()) as stage:
        metrics = _run_cell(spec, checked, stage)
    return metrics


def _run_cell(spec: RunSpec, checked: Checked, stage: Path) -> dict:
    cls, hp, full = checked.cls, checked.hp, checked.full
    out = Path(spec.out)
    device = resolve_device(spec.device)
    torch.manual_seed(spec.seed)
    cell = _cell_data(spec, checked)

    backbone_info = {}

    def backbone_fn():
        bb = _cached_backbone(spec.backbone, spec.pretrained, str(device))
        backbone_info["sha256"] = bb.sha256
        return bb

    inputs = inputs_for(cls, spec, backbone_fn, device)
    method = cls(hp).to(device)
    needs = method.data_needs()
    classes = inputs.classes(full, needs.templates, cell.base_labels)
    precision = hp.get("precision", "auto")  # a training-loop key (TrainConfig); evaluation follows it

    t0 = time.perf_counter()
    task = inputs.task(method, cell, classes, needs)
    info = dict(method.setup(task) or {})
    train_stats = {}
    if cls.trains:
        train_stats = train(method, inputs.batches(task, needs, spec.seed), train_config(hp, _train_identity(spec, hp)),
                            device, out / "train_state.pt", on_epoch_end=lambda e: method.epoch_end(task, e),
                            desc=f"{cls.name} {spec.dataset} {spec.shots}-shot")
    info.update(method.finish(task) or {})
    train_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    test = inputs.test(full, cell.base_labels)
    logits = inputs.logits(method, test, classes, precision)
    eval_seconds = time.perf_counter() - t1

    _save_checkpoint(stage, spec, method, hp)
    base = _result_base(spec, cls, hp, method, checked.manifest, info, train_stats, train_seconds, device,
                        backbone_info.get("sha256") or features_backbone_sha(spec))

    # extra evaluations first, the cell's own metrics.json last (it marks the cell finished)
    n_base = len(cell.ds.classnames)
    evaluate_targets(spec, method, inputs, full, n_base, needs.templates, base, stage, precision)
    metrics = {**base, "eval_dataset": spec.dataset, "eval_split": "base" if spec.protocol == "base2new" else "test",
               "n_classes": n_base, "eval_seconds": eval_seconds}
    metrics = write_eval(stage, full, test.paths, test.labels, logits, metrics, method.report)
    publish(stage, out)
    (out / "train_state.pt").unlink(missing_ok=True)
    return metrics


def _cell_data(spec: RunSpec, checked: Checked) -> CellData:
    """The training dataset and manifest items: base-to-new trains on the base half, relabelled."""
    full, manifest = checked.full, checked.manifest
    ds, base_labels = full, None
    if spec.protocol == "base2new":
        ds = base_new_split(full, "base")
        manifest = base_new_manifest(manifest, len(full.classnames), "base")
        base_labels = list(range(len(ds.classnames)))
    def items(split):
        return [Item(p, int(lab), ds.classnames[int(lab)]) for p, lab in manifest[split]]

    return CellData(full, ds, base_labels, items("train"), items("val"))


def _result_base(spec: RunSpec, cls: type[Method], hp: dict, method: Method, manifest: dict, info: dict,
                 train_stats: dict, train_seconds: float, device: torch.device, backbone_sha: str) -> dict:
    """What every metrics.json of the cell shares (its own and each extra evaluation's). A method
    that reads no few-shot data (`uses_fewshot_sample = False`) says that its result stands for
    every K and seed: `fewclip collect` then places it at the other methods' (shots, seed)."""
    shared = {} if cls.uses_fewshot_sample else {SHARED_ACROSS: ["shots", "seed"]}
    return {
        **spec.identity(), "method": cls.name, **shared,
        "trainable_params": sum(p.numel() for p in method.parameters() if p.requires_grad),
        "epochs": int(train_stats.get("epochs", 0)) if cls.trains else 0, "train_seconds": train_seconds,
        "peak_mem_mb": peak_mem_mb(device), "hparams": hp, "selected": info, "train": train_stats,
        "short_classes": manifest.get("short_classes", {}), "val_is_test": manifest.get("val_is_test", False),
        "provenance": provenance(spec, manifest, backbone_sha, device), "status": "complete",
    }


def _save_checkpoint(stage: Path, spec: RunSpec, method: Method, hp: dict) -> None:
    if any(p.requires_grad for p in method.parameters()) or len(method.state_dict()):
        with atomic_path(stage / "checkpoint.pt") as tmp:
            torch.save({"method": method.name, "backbone": spec.backbone, "pretrained": spec.pretrained,
                        "hp": hp, "state": method.state_dict()}, tmp)


def _train_identity(spec: RunSpec, hp: dict) -> dict:
    """What a resumable training checkpoint must match."""
    return {"method": spec.method, "backbone": spec.backbone, "pretrained": spec.pretrained, "dataset": spec.dataset,
            "shots": spec.shots, "seed": spec.seed, "protocol": spec.protocol, "hp": sha256_json(hp)}


def train_config(hp: dict, identity: dict) -> TrainConfig:
    """The training loop's settings: a trained method's hyper-parameters carry TrainConfig's keys
    (`fewclip.methods.base.train_hparams`)."""
    keys = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: hp[k] for k in keys if k in hp and k != "identity"}, identity=identity)


@functools.lru_cache(maxsize=2)
def _cached_backbone(name: str, pretrained: str, device: str):
    """Cells run in one process share their backbone (a frozen model: nothing leaks between cells)."""
    from ..models.backbone import load_backbone

    return load_backbone(name, pretrained, device)


def features_backbone_sha(spec: RunSpec) -> str:
    """The weights a feature-level cell's features were computed from, named without loading the
    backbone: the store's files are recomputed whenever their recorded weights differ from these
    (fewclip.engine.features), so this is the identity of the current --pretrained (a local file's
    sha256, read now), in the form a loaded backbone gives it (`Backbone.sha256`)."""
    identity = weights_identity(spec.backbone, spec.pretrained)
    if identity.startswith("sha256:"):
        return identity.removeprefix("sha256:")
    path = Path(store_dir(spec.features, spec.key, spec.dataset)) / "store.json"
    if path.is_file():  # an open_clip tag: the published hash `fewclip encode` recorded, if of these weights
        stored = json.loads(path.read_text())
        if stored.get("source", {}).get("weights") == identity:
            return stored["sha256"]
    return identity
