"""Evaluation of a fitted method: the cell's own test split, and the extra targets of the same
fitted model (base-to-new's new classes, DG targets, cross-dataset targets), each into
`eval_{target}/`. Each folder gets `predictions.parquet` and `metrics.json` (last)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..constants import CROSS_DATASET
from ..data.datasets import Dataset
from ..errors import ConfigError
from ..io import atomic_path, write_json
from ..methods import ClassSet, Method, NotApplicable
from .validate import cached_dataset, check_not_empty


def write_eval(out: Path, ds: Dataset, paths: list[str], labels: torch.Tensor, logits: torch.Tensor | None,
                metrics: dict, report=None) -> dict:
    import pandas as pd

    check_not_empty(ds.name, paths, str(metrics.get("eval_split", "test")))
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
        if report is not None:  # the number the official code reports (Method.report)
            metrics.update(report(metrics["top1"]))
    write_json(out / "metrics.json", metrics)
    return metrics


def eval_targets(spec) -> list[str]:
    if spec.protocol == "base2new":
        return ["new"]
    if spec.protocol == "dg":
        return [*spec.evals, *spec.cross_dataset]
    if spec.evals or spec.cross_dataset:
        raise ConfigError("evaluation targets are for --protocol dg")
    return []


def dg_classes(inputs, target: Dataset, source: Dataset, template_set: str) -> ClassSet:
    """A DG target's classifier: the target's own class names (text side); class-specific heads
    see where each target class sits among the source classes (A/R: their 200 ImageNet indices)."""
    cls = inputs.classes(target, template_set)
    if target.imagenet_index is not None:
        cls.train_index = torch.tensor(target.imagenet_index, dtype=torch.long)
    elif len(target.classnames) != len(source.classnames):
        raise ConfigError(f"DG target {target.name} has {len(target.classnames)} classes, the source "
                          f"{source.name} {len(source.classnames)}, and no index map between them")
    return cls


def cross_dataset_classes(inputs, target: Dataset, template_set: str) -> ClassSet:
    """A cross-dataset target's classifier (CoCoOp's `xd_test.sh`): the target's own class names and
    text features; none of its classes was seen in training, so class-specific heads are n/a."""
    cls = inputs.classes(target, template_set)
    cls.train_index = None
    return cls


def evaluate_targets(spec, method: Method, inputs, full: Dataset, n_base: int, template_set: str, base: dict,
                     stage: Path, precision: str) -> None:
    """The extra evaluations of the fitted model, each in `stage/eval_{target}` (n/a when the method
    cannot score the target's classes: `na_reason`, top-1 None). A dg cell's evaluations record
    `eval_protocol`: "dg" (a DG target) or "cross_dataset" (another dataset, its own classes)."""
    for target in eval_targets(spec):
        t0 = time.perf_counter()
        if target == "new":
            new_labels = list(range(n_base, len(full.classnames)))
            tcls = inputs.classes(full, template_set, new_labels)
            tcls.train_index = None
            tds, tfeats = full, inputs.test(full, new_labels)
        else:
            tds = cached_dataset(target, spec.data_root)
            tcls = (cross_dataset_classes(inputs, tds, template_set) if target in spec.cross_dataset
                    else dg_classes(inputs, tds, full, template_set))
            tfeats = inputs.test(tds)
        try:
            tlogits, na = inputs.logits(method, tfeats, tcls, precision), None
        except NotApplicable as why:
            tlogits, na = None, str(why)
        m = {**base, "eval_dataset": tds.name, "eval_split": "new" if target == "new" else "test",
             "n_classes": len(tcls.names), "eval_seconds": time.perf_counter() - t0}
        if spec.protocol == "dg":
            m["eval_protocol"] = CROSS_DATASET if target in spec.cross_dataset else "dg"
        if na:
            m["na_reason"] = na
        write_eval(stage / f"eval_{target}", tds, tfeats.paths, tfeats.labels, tlogits, m)
