import json
import shlex
from pathlib import Path

from snakemake.utils import validate

from fewclip import paths
from fewclip.constants import PRESETS, PROTOCOLS
from fewclip.grid import cell_resources, image_methods, method_cells, run_shots, sample_free_methods
from fewclip.data.datasets import get_spec
from fewclip.engine.features import PRECISION, PREPROCESS, STORE_FORMAT, weights_identity
from fewclip.errors import ConfigError, FewclipError
from fewclip.models.backbone import is_local_file
from fewclip.plan import check_config, check_paths, check_retired_keys, plan


check_retired_keys(config)  # a key fewclip no longer reads: say what replaced it (the schema would not)
check_paths(config)  # names that become folders, braces in paths: how to fix (the schema would only say "does not match")
validate(config, "../schemas/config.schema.yaml")
# Backbone model names, method names and every method_params key and value are checked here,
# before any job; each cell's hyper-parameters are resolved once (fewclip.plan, the same code as
# `fewclip plan`) and every job is handed their digest: `fewclip run` refuses to run anything else.
#
# What re-runs after a change (README, "What happens when…"): a job's params hold only what its
# outputs depend on, its inputs only the files it reads. A cell: its own resolved hyper-parameters
# (their digest), backbone model and weights identity, preset, protocol and targets, data root; its
# manifest, the store (store.json) and, if its method reads them, the augmented views (views.json);
# an image-encoder cell also the weights file. The store: data root, weights identity (a local
# checkpoint's sha256, and the file as an input), templates, its manifests; the views: their count.
PLAN = plan(check_config(config))
CELLS = [p.cell for p in PLAN]
PLANNED = {(c.protocol, c.backbone, c.dataset, c.method, c.shots, c.seed): p for p, c in zip(PLAN, CELLS)}
HPARAMS_SHA = {key: p.hparams_sha for key, p in PLANNED.items()}
IMAGE_METHODS = image_methods()  # from the registry: the methods whose class declares needs = "images"
# ... and those whose class declares uses_fewshot_sample = False: one cell per (protocol, backbone,
# dataset), at the protocol's first K and first seed (the planner's CELLS hold only that one).
SAMPLE_FREE = sample_free_methods()
DATA_ROOT = config["data_root"]
# `fit` runs the feature-level methods (CPU), `fit_gpu` the image-encoder ones (`needs = "images"`):
# two rule names so that a cluster profile can send them to different partitions.
NEVER = "(?!x)x"  # a regex that matches nothing (no method on that side)
IMAGE_METHODS_RE = "|".join(sorted(IMAGE_METHODS)) or NEVER
FEATURE_METHODS_RE = "|".join(sorted({c.method for c in CELLS} - IMAGE_METHODS)) or NEVER


wildcard_constraints:
    protocol="|".join(PROTOCOLS),
    shots=r"\d+",
    seed=r"\d+",
    backbone=r"[A-Za-z0-9_.\-]+",
    dataset=r"[a-z0-9_]+",
    method=r"[A-Za-z0-9_]+",
    preset="|".join(PRESETS),


def get_final_output():
    """Every cell's metrics, and the reports built from them unless `reports: false`."""
    return ["reports/README.md"] if config.get("reports", True) else all_metrics()


def all_metrics():
    """The cells' metrics.json (each cell's job writes its eval_* folders before it)."""
    return [f"{c.run_dir}/metrics.json" for c in CELLS]


def data_ready():
    """The data root's marker when the workflow generates the data itself (demo, fixtures)."""
    gen = config.get("generate_data", "none")
    return [f"{DATA_ROOT}/.fewclip-{gen}.json"] if gen != "none" else []


def split_file(dataset):
    """The dataset's split file (split JSON, classnames.txt, variants.txt) when it is on disk: an
    input of the dataset's splits and stores, so an edited file re-runs them. A data root that the
    workflow generates (`generate_data`), or that is still to be downloaded, has none yet."""
    if config.get("generate_data", "none") != "none":
        return []
    spec = get_spec(dataset)
    path = Path(DATA_ROOT) / spec.folder / spec.split_file
    return [str(path)] if path.is_file() else []


# How the store computes its features (fewclip.engine.features): a param of the encode jobs, so a
# fewclip that preprocesses, stores or encodes otherwise re-encodes.
STORE_SOURCE = {"format": STORE_FORMAT, "preprocess": PREPROCESS, "precision": PRECISION}


def manifest_path(dataset, shots, seed):
    return paths.format_path(paths.MANIFEST, dataset=dataset, preset=config["preset"], shots=shots, seed=seed)


def manifests_for(backbone, dataset):
    """Every manifest of `dataset` used by some cell of `backbone`: the store encodes their union."""
    cells = [c for c in CELLS if c.backbone == backbone and c.dataset == dataset]
    return sorted({manifest_path(c.dataset, c.shots, c.seed) for c in cells})


def backbone_cfg(key):
    return config["backbones"][key]


def workflow_weights(key):
    """A backbone checkpoint that a rule of this workflow writes (the demo's micro-CLIP)."""
    pretrained = backbone_cfg(key)["pretrained"]
    return [pretrained] if pretrained.startswith("results/") else []


def weights_file(key):
    """The backbone's local checkpoint, as an input of the jobs that read it (the store's encode
    jobs and the image-encoder cells): overwritten in place, it is newer than their outputs and
    they re-run. An open_clip tag or a random init is no file."""
    pretrained = backbone_cfg(key)["pretrained"]
    if pretrained in ("none", "") or not is_local_file(pretrained):
        return []
    return [str(Path(pretrained).expanduser())]


WEIGHTS_IDS = {}


def weights_id(key):
    """The weights' identity in a job's params: a user's local checkpoint by its sha256 (another
    file, or new content under the same path, changes it), a checkpoint the workflow writes
    itself by its path (its rule's own inputs decide when it changes), a tag by model and tag."""
    if key not in WEIGHTS_IDS:
        bb = backbone_cfg(key)
        if workflow_weights(key):
            WEIGHTS_IDS[key] = f"workflow:{bb['pretrained']}"
        else:
            try:
                WEIGHTS_IDS[key] = weights_identity(bb["model"], bb["pretrained"])
            except FewclipError as err:
                raise ConfigError(f"config key backbones.{key}.pretrained: {err}") from err
    return WEIGHTS_IDS[key]


def store(backbone, dataset):
    return paths.format_path(paths.STORE, backbone=backbone, dataset=dataset)


def views(backbone, dataset):
    return paths.format_path(paths.VIEWS, backbone=backbone, dataset=dataset)


def dg_targets():
    """Every dataset a dg cell's model is evaluated on: the DG targets, then the cross-dataset ones."""
    dg = config["protocols"].get("dg") or {}
    return [*(dg.get("targets") or []), *(dg.get("cross_dataset") or [])]


def target_stores(wildcards):
    """A dg cell's job reads the feature store of every DG and cross-dataset target (rule encode
    writes each, see `encode_targets`), so it starts only once they are encoded."""
    if wildcards.protocol != "dg":
        return {}
    return {f"target_{t}": store(wildcards.backbone, t) for t in dg_targets()}


def cell_reads(backbone, dataset, cells):
    """The store files beyond store.json that `cells` (planned cells of one job) read: the views
    if one of them reads stored views, the weights file if one trains through the image encoder."""
    out = {}
    if any(p.views for p in cells):
        out["views"] = views(backbone, dataset)
    if any(p.cell.method in IMAGE_METHODS for p in cells) and weights_file(backbone):
        out["weights"] = weights_file(backbone)
    return out


def fit_inputs(wildcards):
    w = wildcards
    planned = PLANNED[(w.protocol, w.backbone, w.dataset, w.method, int(w.shots), int(w.seed))]
    return {
        "manifest": manifest_path(w.dataset, w.shots, w.seed),
        "store": store(w.backbone, w.dataset),
        **cell_reads(w.backbone, w.dataset, [planned]),
        **target_stores(wildcards),
    }


def planned_sha(wildcards, shots, seed):
    w = wildcards
    return HPARAMS_SHA[(w.protocol, w.backbone, w.dataset, w.method, int(shots), int(seed))]


def fit_args(wildcards):
    """The `fewclip run` arguments of one cell, shell-quoted (no config value reaches the shell raw)."""
    cell = shlex.join(["--shots", wildcards.shots, "--seed", wildcards.seed,
                       "--expect-hparams", planned_sha(wildcards, wildcards.shots, wildcards.seed)])
    return f"{cell} {_method_args(wildcards)}"


def batch_shots(protocol):
    p = config["protocols"][protocol]
    return p["shots"] if isinstance(p["shots"], list) else [p["shots"]]


def batch_groups():
    """`batch_cells: true`: (protocol, backbone, side, shots, methods) of each batched fit. Its job for
    one dataset runs every (method, shots, seed) cell of its side, `images` (the methods whose
    class declares needs = "images", on `device`) or `features` (the rest, on the CPU), at `shots`
    (a few-shot run's own K, else the protocol's: runs with other K are other groups)."""
    groups: dict = {}
    for protocol, p in config["protocols"].items():
        for run in p["runs"]:
            for m in run["methods"]:
                side = "images" if m in IMAGE_METHODS else "features"
                groups.setdefault((protocol, run["backbone"], side, tuple(run_shots(p, run))), set()).add(m)
    return [(p, b, side, list(k), sorted(ms)) for (p, b, side, k), ms in sorted(groups.items())]


def batch_suffix(protocol, shots):
    """'' for a group at the protocol's K; '_k4' (its K) for a run that chose its own."""
    return "" if list(shots) == batch_shots(protocol) else "_k" + "_".join(map(str, shots))


def batch_cells(protocol, methods, shots):
    """(method, shots, seed) of one batched job's cells, in the order `fewclip run` runs them: every
    (shots, seed) of a method, or the first of each for a method whose result depends on neither
    (SAMPLE_FREE; `fewclip run` skips the others the same way, fewclip.grid.method_cells)."""
    return method_cells(methods, shots, config["seeds"], SAMPLE_FREE)


def batch_outputs(protocol, methods, shots):
    """Outputs of one batched job: its (method, shots, seed) cells of a (backbone, dataset).
    Protocol, backbone and dataset stay wildcards (each batch rule constrains the first two)."""
    metrics = f"{paths.RUN_DIR}/metrics.json"
    return [metrics.replace("{method}", m).replace("{shots}", str(k)).replace("{seed}", str(s))
            for m, k, s in batch_cells(protocol, methods, shots)]


def batch_inputs(methods, shots):
    def inputs(wildcards):
        w = wildcards
        planned = [PLANNED[(w.protocol, w.backbone, w.dataset, m, k, s)]
                   for m, k, s in batch_cells(w.protocol, methods, shots)]
        return {"store": store(w.backbone, w.dataset),
                "manifests": [manifest_path(w.dataset, k, s)
                              for k in shots for s in config["seeds"]],
                **cell_reads(w.backbone, w.dataset, planned),
                **target_stores(wildcards)}

    return inputs


def batch_args(methods, shots):
    """`fewclip run` over all (method, shots, seed) cells of the job, in one process."""

    def args(wildcards):
        w = wildcards
        out = paths.RUN_DIR.replace("{protocol}", w.protocol).replace("{backbone}", w.backbone).replace("{dataset}", w.dataset)
        seeds = [str(s) for s in config["seeds"]]
        digests = [HPARAMS_SHA[(w.protocol, w.backbone, w.dataset, m, int(k), int(s))]
                   for m, k, s in batch_cells(w.protocol, methods, shots)]  # the order `fewclip run` runs them
        cells = shlex.join(["--method", *methods, "--shots", *map(str, shots), "--seed", *seeds, "--out", out,
                            "--manifest", manifest_path(w.dataset, "{shots}", "{seed}"),
                            "--expect-hparams", *digests])
        return f"{cells} {_method_args(w, methods)}"

    return args


def batch_resources(protocol, side, methods, shots):
    """(threads, gpu, mem_mb, runtime) of a batched job: the largest method's memory, the sum of
    its cells' run times (the same per-cell figures as `fit`)."""
    image = side == "images" and config["device"] != "cpu"

    def mem(wildcards):
        return max(cell_mem(m, wildcards.dataset) for m in methods)

    def runtime(wildcards):
        return sum(cell_runtime(m, wildcards.dataset, k) for m, k, _ in batch_cells(protocol, methods, shots))

    return 4 if image else 1, 1 if image else 0, mem, runtime


def _method_args(wildcards, methods=None):
    """The arguments shared by a job's cells; `methods` (a batched job's, all on one side) get
    their `method_params` as --set METHOD.KEY=VALUE."""
    bb = backbone_cfg(wildcards.backbone)
    batched = methods is not None
    methods = methods or [wildcards.method]
    image = methods[0] in IMAGE_METHODS
    args = [
        "--data-root", DATA_ROOT, "--dataset", wildcards.dataset, *([] if batched else ["--method", methods[0]]),
        "--backbone", bb["model"], "--backbone-key", wildcards.backbone, "--pretrained", bb["pretrained"],
        "--preset", config["preset"],
        "--protocol", wildcards.protocol, "--features", paths.FEATURES,
        "--device", config["device"] if image else "cpu",
    ]
    if wildcards.protocol == "dg":
        dg = config["protocols"]["dg"]
        if dg.get("targets"):
            args += ["--eval", *dg["targets"]]
        if dg.get("cross_dataset"):
            args += ["--cross-dataset", *dg["cross_dataset"]]
    for m in methods:
        for key, value in config.get("method_params", {}).get(m, {}).items():
            args += ["--set", f"{m + '.' if batched else ''}{key}={json.dumps(value)}"]
    return shlex.join(str(a) for a in args)


def encode_args(part):
    """`fewclip encode` arguments of the store's job (part "store", the test, few-shot and text
    features) or of the views' job (part "views"). A function of the wildcards only, not of the inputs:
    Snakemake records such params, so a change to any of them re-runs the job."""

    def args(wildcards):
        bb = backbone_cfg(wildcards.backbone)
        args = ["--data-root", DATA_ROOT, "--dataset", wildcards.dataset, "--backbone", bb["model"],
                "--backbone-key", wildcards.backbone, "--pretrained", bb["pretrained"], "--device", config["device"]]
        if part == "views":
            args += ["--views", config["views"], "--views-only"]
        else:
            args += ["--views", 0, "--templates", *config["templates"]]
        manifests = manifests_for(wildcards.backbone, wildcards.dataset)
        if manifests:
            args += ["--manifests", *manifests]
        return shlex.join(str(a) for a in args)

    return args


# Resources. `gpu` is a count: locally a scheduler token (`--resources gpu=N`; the job takes a
# device from the lock-file pool in fewclip.gpus), on SLURM `--gpus`. Feature-level methods
# (needs = "features") read the feature store on the CPU: they never hold a GPU. A cell's
# (mem_mb, runtime in minutes) is its method class's `resources`, scaled by fewclip.grid.cell_resources.


def uses_gpu(wildcards):
    return config["device"] != "cpu" and wildcards.method in IMAGE_METHODS


def gpu_for(wildcards):
    return 1 if uses_gpu(wildcards) else 0


def threads_for(wildcards):
    """Image-method jobs on a GPU get CPU cores for data loading; on a CPU-only run every job
    takes one core, so `--cores N` runs N jobs side by side (small models scale poorly with threads)."""
    return 4 if uses_gpu(wildcards) else 1


def mem_for(wildcards):
    return cell_mem(wildcards.method, wildcards.dataset)


def runtime_for(wildcards):
    return cell_runtime(wildcards.method, wildcards.dataset, int(wildcards.shots))


def cell_mem(method, dataset):
    return cell_resources(method, dataset, 1)[0]  # memory does not depend on K


def cell_runtime(method, dataset, shots):
    return cell_resources(method, dataset, int(shots))[1]


def fit_group(wildcards):
    """Feature-level cells take seconds: on a cluster, `group-components: features=N` packs N of
    them into one submission (groups are ignored by local runs). GPU cells stay single jobs."""
    return None if wildcards.method in IMAGE_METHODS else "features"


def encode_gpu(wildcards):
    return 0 if config["device"] == "cpu" else 1


def encode_threads(wildcards):
    """2 cores for a GPU encode's data loading; on a CPU-only run 1, as every fit job: the
    demo's small stores then encode side by side with other jobs instead of one at a time."""
    return 1 if config["device"] == "cpu" else 2


def encode_mem(wildcards):
    return 32000 if wildcards.dataset == "imagenet" else 8000


def encode_runtime(wildcards):
    return 240 if wildcards.dataset == "imagenet" else 60


def encode_targets():
    """(backbone, dataset) pairs whose store the grid needs: the cells' datasets, and the DG and
    cross-dataset targets of every dg run's backbone (the dg jobs depend on those: `target_stores`)."""
    pairs = {(c.backbone, c.dataset) for c in CELLS}
    dg = config["protocols"].get("dg")
    if dg:
        pairs |= {(r["backbone"], t) for r in dg["runs"] for t in dg_targets()}
    return sorted(pairs)
