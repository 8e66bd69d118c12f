"""Published numbers (package data, with their source) and the mapping of their names to fewclip keys."""

from __future__ import annotations

import re
from importlib import resources

import pandas as pd

# Published method name → fewclip method key. Names not listed (MaPLe, KgCoOp, ProGrad, ProDA,
# MaPLe's 5-epoch prompting ablations, CLIP's prompt ensemble) have no fewclip counterpart:
# their rows stay in the paper-vs-ours table with "ours" empty.
METHOD_KEYS = {
    "Zero-shot CLIP": "zeroshot",
    "Zero-shot CLIP-RN50": "zeroshot",
    "CLIP (hand-crafted)": "zeroshot",
    "Linear-probe CLIP": "linear_probe",
    "CoOp": "coop",
    "CoOp (M=16,end; rn50_ep50)": "coop",
    "CoOp (M=16,end; vit_b32_ep50)": "coop",
    "CoOp (M=16,end,CSC=False)": "coop",
    "CoCoOp": "cocoop",
    "CLIP-Adapter": "clip_adapter",
    "Tip-Adapter": "tip_adapter",
    "Tip-Adapter (training-free)": "tip_adapter",
    "Tip-Adapter-F": "tip_adapter_f",
    "GDA": "gda",
    "KgCoOp": "kgcoop",
    "MaPLe": "maple",
    "MaPLe (5 ep)": "maple",  # MaPLe's README base-to-novel row: its official 5-epoch recipe
    "PromptSRC": "promptsrc",
}

# Published dataset name → normalised dataset key (see `norm_dataset`), where plain
# normalisation is not enough.
DATASET_ALIASES = {
    "flowers102": "oxfordflowers",
    "oxfordflowers102": "oxfordflowers",
    "describabletextures": "dtd",
    "imagenetadversarial": "imageneta",
    "imagenetrendition": "imagenetr",
    "food": "food101",
}

# Our metrics field for each published non-accuracy metric (efficiency table rows).
METRIC_FIELDS = {
    "top1_acc": "top1",
    "epochs": "epochs",
    "train_time_min": "train_minutes",
    "infer_speed_ms": "infer_ms_per_image",
    "gpu_mem_mib": "peak_mem_mb",
}

METHOD_ORDER = [
    "zeroshot", "linear_probe", "coop", "cocoop", "clip_adapter",
    "tip_adapter", "tip_adapter_f", "vpt", "vlp", "dpt",
    "kgcoop", "maple", "promptsrc", "clip_lora", "lpp", "gda",
]


def published() -> pd.DataFrame:
    """The published reference numbers shipped with fewclip (one row per number, with `source`)."""
    with resources.files("fewclip.data").joinpath("published_results.csv").open() as fh:
        return pd.read_csv(fh)


def norm_dataset(name: str) -> str:
    """Lower-case alphanumerics with aliases: 'ImageNet-V2', 'imagenet_v2', 'imagenetv2' → 'imagenetv2'."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    return DATASET_ALIASES.get(key, key)


def norm_backbone(name: str) -> str:
    """'ViT-B/16 (not stated …)' and open_clip's 'ViT-B-16' → 'vitb16'."""
    name = re.sub(r"\(.*\)", "", str(name))
    return re.sub(r"[^a-z0-9]", "", name.lower())


def average_size(dataset: str) -> int | None:
    """'Average(11)' → 11, 'Average(4 targets)' → 4; None for a real dataset."""
    m = re.match(r".*average\((\d+)", str(dataset).lower())
    return int(m.group(1)) if m else None


DG_TARGET_ORDER = ["imagenetv2", "imagenetsketch", "imageneta", "imagenetr"]


def dg_target_order(dataset: str) -> tuple[int, str]:
    """Sort key: the papers' column order V2, Sketch, A, R, then any other target alphabetically."""
    key = norm_dataset(dataset)
    return (DG_TARGET_ORDER.index(key) if key in DG_TARGET_ORDER else len(DG_TARGET_ORDER), key)


# CoCoOp's Table 2 column order (the 10 targets of an ImageNet-trained model).
XD_TARGET_ORDER = ["caltech101", "oxfordpets", "stanfordcars", "oxfordflowers", "food101", "fgvcaircraft",
                   "sun397", "dtd", "eurosat", "ucf101"]


def xd_target_order(dataset: str) -> tuple[int, str]:
    """Sort key: CoCoOp's Table 2 column order, then any other target alphabetically."""
    key = norm_dataset(dataset)
    return (XD_TARGET_ORDER.index(key) if key in XD_TARGET_ORDER else len(XD_TARGET_ORDER), key)


def is_cross_dataset(row: dict) -> bool:
    """A published row of a cross-dataset transfer table (CoCoOp's Table 2 and its copies)."""
    return "cross-dataset" in str(row.get("table", "")).lower()


def method_order(methods) -> list[str]:
    known = [m for m in METHOD_ORDER if m in set(methods)]
    return known + sorted(set(methods) - set(known))
