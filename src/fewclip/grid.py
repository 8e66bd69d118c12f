"""The experiment grid: config → the list of run cells. Shared by Snakemake and `fewclip collect`.

A cell is one (protocol, backbone, dataset, method, shots, seed) run directory; DG and
base-to-new evaluations are extra `eval_{target}` folders inside a cell's directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


# The methods that ship with fewclip (the registry must list exactly these; a test checks it).
# Configs are checked against the registry itself (fewclip.plan), which also holds the user's
# FEWCLIP_PLUGINS.
BUILTIN_METHODS = ("zeroshot", "linear_probe", "coop", "cocoop", "clip_adapter", "tip_adapter",
                   "tip_adapter_f", "vpt", "vlp", "dpt")


@dataclass(frozen=True)
class Cell:
    protocol: str  # "fewshot" | "base2new" | "dg"
    backbone: str  # key of config["backbones"], used in paths
    dataset: str
    method: str
    shots: int
    seed: int
    evals: tuple[str, ...] = field(default=())  # extra evaluations: DG targets, or ("new",)

    @property
    def run_dir(self) -> str:
        return run_dir(self.protocol, self.backbone, self.dataset, self.method, self.shots, self.seed)

    def eval_dirs(self) -> list[str]:
        return [f"{self.run_dir}/eval_{t}" for t in self.evals]


def run_dir(protocol, backbone, dataset, method, shots, seed, results: str = "results") -> str:
    return f"{results}/runs/{protocol}/{backbone}/{dataset}/{method}/{shots}shot/seed{seed}"


def expand_grid(config: dict) -> list[Cell]:
    """Every cell of the configured grid, in a stable order."""
    seeds = config["seeds"]
    cells: list[Cell] = []
    protocols = config.get("protocols", {})
    fs = protocols.get("fewshot")
    if fs:
        for run in fs["runs"]:
            for dataset in fs["datasets"]:
                for method in run["methods"]:
                    for k in fs["shots"]:
                        for s in seeds:
                            cells.append(Cell("fewshot", run["backbone"], dataset, method, k, s))
    b2n = protocols.get("base2new")
    if b2n:
        for run in b2n["runs"]:
            for dataset in b2n["datasets"]:
                for method in run["methods"]:
                    for s in seeds:
                        cells.append(Cell("base2new", run["backbone"], dataset, method, b2n["shots"], s, ("new",)))
    dg = protocols.get("dg")
    if dg:
        for run in dg["runs"]:
            for method in run["methods"]:
                for k in _as_list(dg["shots"]):
                    for s in seeds:
                        cells.append(Cell("dg", run["backbone"], dg["source"], method, k, s, tuple(dg["targets"])))
    return cells


def _as_list(x):
    return x if isinstance(x, list) else [x]


def expected_metrics(config: dict, results: str = "results") -> list[Path]:
    """All metrics.json files a complete run of the grid writes."""
    out = []
    for c in expand_grid(config):
        base = Path(results) / Path(c.run_dir).relative_to("results")
        out.append(base / "metrics.json")
        out.extend(base / f"eval_{t}" / "metrics.json" for t in c.evals)
    return out
