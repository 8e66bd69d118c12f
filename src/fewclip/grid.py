"""The experiment grid: config → the list of run cells. Shared by Snakemake and `fewclip collect`.

A cell is one (protocol, backbone, dataset, method, shots, seed) run directory; DG,
cross-dataset and base-to-new evaluations are extra `eval_{target}` folders inside a cell's
directory: a `dg` cell trains its model once and evaluates it on every DG target (`targets`) and
every cross-dataset target (`cross_dataset`).

What a cell needs from a scheduler (its side, memory, run time) comes from its method's class in
the registry (`needs`, `resource_needs()`), never from the config: `image_methods` and
`cell_resources` are what the Snakemake rules call. The methods are imported only there (torch),
so `fewclip collect` can read the grid without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import paths

# Datasets whose test sets / class counts make a cell slower: ImageNet's cells take 4× the time and
# 2× the memory of a CoOp-sized dataset's, the others 2× the time.
IMAGENET_LIKE = ("imagenet", "sun397", "food101")


@dataclass(frozen=True)
class Cell:
    protocol: str  # "fewshot" | "base2new" | "dg"
    backbone: str  # key of config["backbones"], used in paths
    dataset: str
    method: str
    shots: int
    seed: int
    evals: tuple[str, ...] = field(default=())  # extra evaluations: DG then cross-dataset targets, or ("new",)
    cross_dataset: tuple[str, ...] = field(default=())  # those of `evals` scored with their own classes

    @property
    def run_dir(self) -> str:
        return run_dir(self.protocol, self.backbone, self.dataset, self.method, self.shots, self.seed)

    def eval_dirs(self) -> list[str]:
        return [f"{self.run_dir}/eval_{t}" for t in self.evals]


def run_dir(protocol, backbone, dataset, method, shots, seed, results: str = paths.RESULTS) -> str:
    """A cell's run directory (`paths.RUN_DIR`) under `results`."""
    return paths.run_dir(protocol, backbone, dataset, method, shots, seed, results=results)


def image_methods() -> set[str]:
    """The registered methods (fewclip's and FEWCLIP_PLUGINS') that train through the image encoder,
    as their classes declare (`needs = "images"`): their cells run on `device` and hold a GPU; the
    others read the feature store on the CPU."""
    from .methods import image_methods as registered

    return set(registered())


def cell_resources(method: str, dataset: str, shots: int) -> tuple[int, int]:
    """(mem_mb, runtime in minutes) of one cell: the method's `resource_needs()` (a CoOp-sized
    dataset on the paper's GPUs) scaled for the dataset (ImageNet ×2 memory and ×4 time, the other
    IMAGENET_LIKE ×2 time) and, for image-encoder methods, for K (training time grows with the shots)."""
    from .methods import get_method

    cls = get_method(method)
    needs = cls.resource_needs()
    mem, minutes = needs["mem_mb"], needs["runtime"]
    if dataset == "imagenet":
        mem, minutes = mem * 2, minutes * 4
    elif dataset in IMAGENET_LIKE:
        minutes *= 2
    if cls.needs == "images":
        minutes = minutes * (1 + int(shots)) // 8 + minutes // 2
    return mem, minutes


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
        targets, cross = tuple(dg.get("targets") or ()), tuple(dg.get("cross_dataset") or ())
        for run in dg["runs"]:
            for method in run["methods"]:
                for k in _as_list(dg["shots"]):
                    for s in seeds:  # one model per (method, K, seed), evaluated on every target
                        cells.append(Cell("dg", run["backbone"], dg["source"], method, k, s, targets + cross, cross))
    return cells


def _as_list(x):
    return x if isinstance(x, list) else [x]


def expected_metrics(config: dict, results: str = paths.RESULTS) -> list[Path]:
    """All metrics.json files a complete run of the grid writes."""
    out = []
    for c in expand_grid(config):
        base = Path(run_dir(c.protocol, c.backbone, c.dataset, c.method, c.shots, c.seed, results=results))
        out.append(base / "metrics.json")
        out.extend(base / f"eval_{t}" / "metrics.json" for t in c.evals)
    return out
