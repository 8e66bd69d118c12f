import hashlib
import json
import shlex

from snakemake.utils import validate

from fewclip.grid import expand_grid


validate(config, "../schemas/config.schema.yaml")

CELLS = expand_grid(config)
CONFIG_HASH = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
IMAGE_METHODS = set(config["image_methods"])
DATA_ROOT = config["data_root"]


wildcard_constraints:
    protocol="fewshot|base2new|dg",
    shots=r"\d+",
    seed=r"\d+",
    backbone=r"[A-Za-z0-9_.\-]+",
    dataset=r"[a-z0-9_]+",
    method=r"[A-Za-z0-9_]+",
    preset="clean|official",


def get_final_output():
    return all_metrics()


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


def fit_args(wildcards):
    """The `fewclip run` arguments of one cell, shell-quoted (no config value reaches the shell raw)."""
    bb = backbone_cfg(wildcards.backbone)
    image = wildcards.method in IMAGE_METHODS
    args = [
        "--data-root", DATA_ROOT, "--dataset", wildcards.dataset, "--method", wildcards.method,
        "--backbone", bb["model"], "--backbone-key", wildcards.backbone, "--pretrained", bb["pretrained"],
        "--shots", wildcards.shots, "--seed", wildcards.seed, "--preset", config["preset"],
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


def gpu_for(wildcards):
    return 1 if config["device"] != "cpu" and wildcards.method in IMAGE_METHODS else 0


def mem_for(wildcards):
    base = 16000 if wildcards.method in IMAGE_METHODS else 4000
    return base * 2 if wildcards.dataset == "imagenet" else base


def runtime_for(wildcards):
    base = 600 if wildcards.method in IMAGE_METHODS else 30
    return base * 4 if wildcards.dataset == "imagenet" else base


def encode_targets():
    """(backbone, dataset) pairs whose store the grid needs: sources and DG targets."""
    pairs = {(c.backbone, c.dataset) for c in CELLS}
    dg = config["protocols"].get("dg")
    if dg:
        pairs |= {(r["backbone"], t) for r in dg["runs"] for t in dg["targets"]}
    return sorted(pairs)
