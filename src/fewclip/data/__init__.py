"""Datasets in CoOp's layout, image loading, fixtures and Dassl-compatible few-shot manifests."""

from .datasets import (
    DATASETS,
    Dataset,
    DatasetSpec,
    Item,
    base_new_split,
    check_dataset,
    get_spec,
    load_dataset,
)
from .fewshot import make_manifest, read_manifest, sample_fewshot, write_manifest
from .images import load_image

__all__ = [
    "DATASETS", "Dataset", "DatasetSpec", "Item", "base_new_split", "check_dataset", "get_spec",
    "load_dataset", "make_manifest", "read_manifest", "sample_fewshot", "write_manifest", "load_image",
]
