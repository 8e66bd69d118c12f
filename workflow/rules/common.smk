import hashlib
import json
import shlex

from snakemake.utils import validate

from fewclip.plan import check_config, plan


validate(config, "../schemas/config.schema.yaml")
# Backbone model names, method names and every method_params key and value are checked here,
# before any job; each cell's hyper-parameters are resolved once (fewclip.plan, the same code as
# `fewclip plan`) and every job is handed their digest: `fewclip run` refuses to run anything else.
PLAN = plan(check_config(config))
CELLS = [p.cell for p in PLAN]
HPARAMS_SHA = {(c.protocol, c.backbone, c.dataset, c.method, c.shots, c.seed): p.hparams_sha
               for p, c in zip(PLAN, CELLS)}
CONFIG_HASH = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
IMAGE_METHODS = set(config["image_methods"])
DATA_ROOT = config["data_root"]
# `fit` runs the feature-level methods (CPU), `fit_gpu` the image-encoder ones (`image_methods`):
# two rule names so that a cluster profile can send them to different partitions.
NEVER = "(?!x)x"  # a regex that matches nothing (no method on that side)
IMAGE_METHODS_RE = "|".join(sorted(IMAGE_METHODS)) or NEVER
FEATURE_METHODS_RE = "|".join(sorted({c.method for c in CELLS} - IMAGE_METHODS)) or NEVER


wildcard_constraints:
    protocol="fewshot|base2new|dg",
    shots=r"\d+",
    seed=r"\d+",
    backbone=r"[A-Za-z0-9_.\-]+",
    dataset=r"[a-z0-9_]+",
    method=r"[A-Za-z0-9_]+",
    preset="clean|official",


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


def manifest_path(dataset, shots, seed):
    return f"results/splits/{dataset}/{config['preset']}/{shots}shot_seed{seed}.json"


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


def store(backbone, dataset):
    return f"results/features/{backbone}/{dataset}/store.json"


def fit_inputs(wildcards):
    inputs = {
        "manifest": manifest_path(wildcards.dataset, wildcards.shots, wildcards.seed),
        "store": store(wildcards.backbone, wildcards.dataset),
    }
    if wildcards.protocol == "dg":
        for t in config["protocols"]["dg"]["targets"]:
            inputs[f"target_{t}"] = store(wildcards.backbone, t)
    return inputs


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


def batch_outputs(protocol):
    """Outputs of one batched job: every (shots, seed) cell of a (backbone, dataset, method).
    The protocol stays a wildcard (each batch rule constrains it to its own)."""
    run = "results/runs/{protocol}/{backbone}/{dataset}/{method}/{shots}shot/seed{seed}"
    return expand(f"{run}/metrics.json", shots=batch_shots(protocol), seed=config["seeds"], allow_missing=True)


def batch_inputs(wildcards):
    inputs = {"store": store(wildcards.backbone, wildcards.dataset),
              "manifests": [manifest_path(wildcards.dataset, k, s)
                            for k in batch_shots(wildcards.protocol) for s in config["seeds"]]}
    if wildcards.protocol == "dg":
        for t in config["protocols"]["dg"]["targets"]:
            inputs[f"target_{t}"] = store(wildcards.backbone, t)
    return inputs


def batch_args(wildcards):
    """`fewclip run` over all (shots, seed) cells of the job, in one process."""
    w = wildcards
    out = f"results/runs/{w.protocol}/{w.backbone}/{w.dataset}/{w.method}/{{shots}}shot/seed{{seed}}"
    shots = [str(k) for k in batch_shots(w.protocol)]
    seeds = [str(s) for s in config["seeds"]]
    digests = [planned_sha(w, k, s) for k in shots for s in seeds]  # the order `fewclip run` runs them
    cells = shlex.join(["--shots", *shots, "--seed", *seeds, "--out", out,
                        "--manifest", manifest_path(w.dataset, "{shots}", "{seed}"), "--expect-hparams", *digests])
    return f"{cells} {_method_args(w)}"


def _method_args(wildcards):
    bb = backbone_cfg(wildcards.backbone)
    image = wildcards.method in IMAGE_METHODS
    args = [
        "--data-root", DATA_ROOT, "--dataset", wildcards.dataset, "--method", wildcards.method,
        "--backbone", bb["model"], "--backbone-key", wildcards.backbone, "--pretrained", bb["pretrained"],
        "--preset", config["preset"],
        "--protocol", wildcards.protocol, "--features", "results/features",
        "--device", config["device"] if image else "cpu", "--config-hash", CONFIG_HASH,
    ]
    if wildcards.protocol == "dg":
        args += ["--eval", *config["protocols"]["dg"]["targets"]]
    for key, value in config.get("method_params", {}).get(wildcards.method, {}).items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return shlex.join(str(a) for a in args)


def encode_args(wildcards, input):
    bb = backbone_cfg(wildcards.backbone)
    args = ["--data-root", DATA_ROOT, "--dataset", wildcards.dataset, "--backbone", bb["model"],
            "--backbone-key", wildcards.backbone, "--pretrained", bb["pretrained"], "--device", config["device"],
            "--views", config["views"], "--templates", *config["templates"]]
    if input.manifests:
        args += ["--manifests", *input.manifests]
    return shlex.join(str(a) for a in args)


# Resources. `gpu` is a count: locally a scheduler token (`--resources gpu=N`; the job takes a
# device from the lock-file pool in fewclip.gpus), on SLURM `--gpus`. Feature-level methods
# (not in `image_methods`) read the feature store on the CPU: they never hold a GPU.
# (mem_mb, runtime in minutes) of one cell on a non-ImageNet dataset, on the paper's GPUs.
METHOD_RESOURCES = {
    "zeroshot": (2000, 5),
    "linear_probe": (4000, 10),
    "clip_adapter": (4000, 15),
    "tip_adapter": (4000, 5),
    "tip_adapter_f": (6000, 20),
    "coop": (16000, 120),
    "cocoop": (24000, 480),
    "vpt": (16000, 180),
    "vlp": (20000, 240),
    "dpt": (20000, 240),
}
IMAGENET_LIKE = {"imagenet", "sun397", "food101"}  # the large test sets / class counts


def uses_gpu(wildcards):
    return config["device"] != "cpu" and wildcards.method in IMAGE_METHODS


def gpu_for(wildcards):
    return 1 if uses_gpu(wildcards) else 0


def threads_for(wildcards):
    """Image-method jobs on a GPU get CPU cores for data loading; on a CPU-only run every job
    takes one core, so `--cores N` runs N jobs side by side (small models scale poorly with threads)."""
    return 4 if uses_gpu(wildcards) else 1


def _cells_per_job(wildcards):
    """1 for `fit`; a batched job (batch_cells) runs every (shots, seed) of its protocol."""
    if "shots" in wildcards.keys():
        return 1
    p = config["protocols"][wildcards.protocol]
    return len(p["shots"] if isinstance(p["shots"], list) else [p["shots"]]) * len(config["seeds"])


def mem_for(wildcards):
    mem, _ = METHOD_RESOURCES.get(wildcards.method, (16000 if wildcards.method in IMAGE_METHODS else 4000, 0))
    return mem * 2 if wildcards.dataset == "imagenet" else mem


def runtime_for(wildcards):
    _, minutes = METHOD_RESOURCES.get(wildcards.method, (0, 240 if wildcards.method in IMAGE_METHODS else 15))
    if wildcards.dataset == "imagenet":
        minutes *= 4
    elif wildcards.dataset in IMAGENET_LIKE:
        minutes *= 2
    if wildcards.method in IMAGE_METHODS and "shots" in wildcards.keys():
        minutes = minutes * (1 + int(wildcards.shots)) // 8 + minutes // 2  # training time grows with K
    return minutes * _cells_per_job(wildcards)


def fit_group(wildcards):
    """Feature-level cells take seconds: on a cluster, `group-components: features=N` packs N of
    them into one submission (groups are ignored by local runs). GPU cells stay single jobs."""
    return None if wildcards.method in IMAGE_METHODS else "features"


def encode_gpu(wildcards):
    return 0 if config["device"] == "cpu" else 1


def encode_mem(wildcards):
    return 32000 if wildcards.dataset == "imagenet" else 8000


def encode_runtime(wildcards):
    return 240 if wildcards.dataset == "imagenet" else 60


def encode_targets():
    """(backbone, dataset) pairs whose store the grid needs: sources and DG targets."""
    pairs = {(c.backbone, c.dataset) for c in CELLS}
    dg = config["protocols"].get("dg")
    if dg:
        pairs |= {(r["backbone"], t) for r in dg["runs"] for t in dg["targets"]}
    return sorted(pairs)
