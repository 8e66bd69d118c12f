"""A grid cell as `fewclip run` receives it (`RunSpec`), and the identities derived from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# What identifies a cell's results (a run directory holds one cell's; metrics.json records them).
RUN_IDENTITY = ("protocol", "preset", "backbone", "backbone_key", "pretrained", "dataset", "method", "shots", "seed")


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
    evals: list[str] = field(default_factory=list)  # DG target datasets (protocol dg): the source's classes
    cross_dataset: list[str] = field(default_factory=list)  # cross-dataset targets (protocol dg): their own classes
    manifest: str | None = None  # a manifest written by `fewclip split`; sampled here when absent
    features: str | None = None  # feature-store root; default: fewclip.paths.FEATURES
    expect_hparams: str | None = None  # the workflow's planned digest of the resolved hparams (fewclip.plan)
    workers: int = 0

    @property
    def key(self) -> str:
        return self.backbone_key or self.backbone

    def identity(self) -> dict:
        """The RUN_IDENTITY of this cell."""
        return {k: self.key if k == "backbone_key" else getattr(self, k) for k in RUN_IDENTITY}

    def config_identity(self) -> dict:
        """The settings of this one cell (provenance `config_hash`): a change elsewhere in the
        workflow's config leaves it, and the cell, as they are."""
        return {k: getattr(self, k) for k in ("data_root", "dataset", "method", "backbone", "pretrained", "shots",
                                              "seed", "preset", "overrides", "protocol", "evals", "cross_dataset")}
