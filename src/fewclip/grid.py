"""The experiment grid: config → the list of run cells. Shared by Snakemake and `fewclip collect`.

A cell is one (protocol, backbone, dataset, method, shots, seed) run directory; DG,
cross-dataset and base-to-new evaluations are extra `eval_{target}` folders inside a cell's
directory: a `dg` cell trains its model once and evaluates it on every DG target (`targets`) and
every cross-dataset target (`cross_dataset`).

What a cell needs from a scheduler (its side, memory, run time) comes from its method's class in
the registry (`needs`, `resource_needs()`), never from the config: `image_methods` and
`cell_resources` are what the Snakemake rules call. A method whose result depends on neither K nor
the seed (`uses_fewshot_sample = False`) has one cell per (protocol, backbone, dataset) when the
caller passes it in `sample_free` (the planner passes `sample_free_methods()`). The methods are
imported only in those three functions (torch), so `fewclip collect` can read the grid without them.
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


def sample_free_methods() -> set[str]:
    """The registered methods whose class declares `uses_fewshot_sample = False`: their result
    depends on neither K nor the seed, so the planner passes them to `expand_grid` as `sample_free`
    (one cell per protocol, backbone and dataset). Imports the registry (torch), as `image_methods`."""
    from .methods import sample_free_methods as registered

    return set(registered())


def canonical_cell(config: dict, protocol: str) -> tuple[int, int]:
    """(K, seed) of the one cell a sample-free method runs per (backbone, dataset) of `protocol`:
    the protocol's first K and the config's first seed, so its run directory and manifest are
    those of an ordinary cell."""
    return _as_list(config["protocols"][protocol]["shots"])[0], config["seeds"][0]


def method_cells(methods, shots, seeds, sample_free=()) -> list[tuple[str, int, int]]:
    """(method, K, seed) of `methods` × `shots` × `seeds` in run order (method, then K, then seed);
    a method in `sample_free` only at (shots[0], seeds[0]). The cells of one (protocol, backbone,
    dataset): `expand_grid`, a batched workflow job and a multi-cell `fewclip run` all use it."""
    out = []
    for m in methods:
        if m in sample_free:
            out.append((m, shots[0], seeds[0]))
        else:
            out.extend((m, k, s) for k in shots for s in seeds)
    return out


def expand_grid(config: dict, sample_free=()) -> list[Cell]:
    """Every cell of the configured grid, in a stable order.

    `sample_free`: methods whose result depends on neither K nor the seed (`uses_fewshot_sample =
    False`; the planner passes `sample_free_methods()`): one cell each per (protocol, backbone,
    dataset), at `canonical_cell`. Without it every (K, seed) of every method is a cell; the grid
    module itself never imports the registry (`fewclip collect` reads the grid without torch)."""
    seeds = config["seeds"]
    cells: list[Cell] = []
    protocols = config.get("protocols", {})
    fs = protocols.get("fewshot")
    if fs:
        for run in fs["runs"]:
            for dataset in fs["datasets"]:
                for method, k, s in method_cells(run["methods"], run_shots(fs, run), seeds, sample_free):
                    cells.append(Cell("fewshot", run["backbone"], dataset, method, k, s))
    b2n = protocols.get("base2new")
    if b2n:
        for run in b2n["runs"]:
            for dataset in b2n["datasets"]:
                for method, k, s in method_cells(run["methods"], [b2n["shots"]], seeds, sample_free):
                    cells.append(Cell("base2new", run["backbone"], dataset, method, k, s, ("new",)))
    dg = protocols.get("dg")
    if dg:
        targets, cross = tuple(dg.get("targets") or ()), tuple(dg.get("cross_dataset") or ())
        for run in dg["runs"]:
            # one model per (method, K, seed), evaluated on every target
            for method, k, s in method_cells(run["methods"], _as_list(dg["shots"]), seeds, sample_free):
                cells.append(Cell("dg", run["backbone"], dg["source"], method, k, s, targets + cross, cross))
    return cells


def run_shots(protocol_config: dict, run: dict) -> list[int]:
    """The K of one run's cells: its own `shots` (few-shot runs may narrow the protocol's list to the
    K an official script ships, e.g. KgCoOp's 4-shot run), else the protocol's."""
    return run.get("shots") or _as_list(protocol_config["shots"])


def _as_list(x):
    return x if isinstance(x, list) else [x]


def expected_metrics(config: dict, results: str = paths.RESULTS, sample_free=()) -> list[Path]:
    """All metrics.json files a complete run of the grid writes (`sample_free` as `expand_grid`)."""
    out = []
    for c in expand_grid(config, sample_free):
        base = Path(run_dir(c.protocol, c.backbone, c.dataset, c.method, c.shots, c.seed, results=results))
        out.append(base / "metrics.json")
        out.extend(base / f"eval_{t}" / "metrics.json" for t in c.evals)
    return out
