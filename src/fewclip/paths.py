"""Where every artefact of a grid lives (DESIGN.md): one template per kind of file, used by the
engine, the grid helpers, `fewclip collect` and the Snakemake rules (`workflow/rules/*.smk`).

Templates use Snakemake's `{wildcard}` syntax; `format_path` fills them in Python."""

from __future__ import annotations

import re

from .errors import ConfigError

RESULTS = "results"
FEATURES = f"{RESULTS}/features"  # the feature-store root
RUNS = f"{RESULTS}/runs"  # the run directories
SPLITS = f"{RESULTS}/splits"  # the few-shot manifests

STORE_DIR = FEATURES + "/{backbone}/{dataset}"
STORE = STORE_DIR + "/store.json"  # test, few-shot and text features (rule encode)
VIEWS = STORE_DIR + "/views.json"  # the augmented views of the few-shot train images (rule encode_views)
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


# A name that becomes a folder (a backbone key, a dataset, a method, a target): letters, digits, '_',
# '.' and '-', beginning with a letter or digit, so never '..', a path separator or a hidden dot-folder
# (which `fewclip collect` skips). The config schema's `backbones` propertyNames pattern is this one.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_NAME = re.compile(NAME_PATTERN)


def check_name(kind: str, value, where: str = "") -> str:
    """`value` when it may be one folder of a path; else a ConfigError naming `where` (a config key,
    a flag) and the fix."""
    if isinstance(value, str) and _NAME.fullmatch(value):
        return value
    if not isinstance(value, str):
        why = f"is not a string but a {type(value).__name__} (write it in quotes)"
    elif not value:
        why = "is empty"
    elif "/" in value or "\\" in value:
        why = "contains a path separator (outputs would land outside their folder)"
    elif value.startswith("."):
        why = ("starts with a dot ('..' leaves the results folder; a hidden folder is skipped by "
               "`fewclip collect`)")
    else:
        why = "contains characters other than letters, digits, '_', '.' and '-'"
    at = f"{where}: " if where else ""
    raise ConfigError(f"{at}{kind} {value!r} {why}; it names a folder of every output path, so use letters, "
                      "digits, '_', '.' and '-', beginning with a letter or digit")
