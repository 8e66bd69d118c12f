"""Where every artefact of a grid lives (DESIGN.md): one template per kind of file, used by the
engine, the grid helpers, `fewclip collect` and the Snakemake rules (`workflow/rules/*.smk`).

Templates use Snakemake's `{wildcard}` syntax; `format_path` fills them in Python."""

from __future__ import annotations

RESULTS = "results"
FEATURES = f"{RESULTS}/features"  # the feature-store root
RUNS = f"{RESULTS}/runs"  # the run directories
SPLITS = f"{RESULTS}/splits"  # the few-shot manifests

STORE_DIR = FEATURES + "/{backbone}/{dataset}"
STORE = STORE_DIR + "/store.json"
MANIFEST = SPLITS + "/{dataset}/{preset}/{shots}shot_seed{seed}.json"
RUN_DIR = RUNS + "/{protocol}/{backbone}/{dataset}/{method}/{shots}shot/seed{seed}"
DOWNLOAD_MARKER = "{data_root}/.fewclip-download-{dataset}.json"


def format_path(template: str, **values) -> str:
    """`template` with its wildcards filled (every wildcard must be given)."""
    return template.format(**values)


def run_dir(protocol, backbone, dataset, method, shots, seed, results: str = RESULTS) -> str:
    path = format_path(RUN_DIR, protocol=protocol, backbone=backbone, dataset=dataset, method=method,
                       shots=shots, seed=seed)
    return results + path[len(RESULTS):]


def store_dir(features_root: str | None, backbone_key: str, dataset: str) -> str:
    """A (backbone, dataset) feature store under `features_root` (default `results/features`)."""
    return f"{features_root or FEATURES}/{backbone_key}/{dataset}"
