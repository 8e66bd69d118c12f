# Getting the data as part of the DAG: rule `download` runs `fewclip download` for one dataset
# (fetch -> verify size/checksum -> extract -> arrange the layout of docs/data.md -> check) and produces the
# dataset's marker `<data_root>/.fewclip-download-<dataset>.json` (fewclip.paths.DOWNLOAD_MARKER).
#
# The Snakefile includes it, but no target of the grid asks for a marker (fetching tens of GB
# should be a deliberate step, and ImageNet must be fetched by hand): ask for one, e.g.
# `snakemake -c1 <data_root>/.fewclip-download-dtd.json`.
# Optional config keys: download_sources (another sources table, JSON), download_mirrors (list of
# URL bases tried first). Needs DATA_ROOT (defined in common.smk).
import os
import re
import shlex

from fewclip import paths
from fewclip.data.datasets import DATASETS
from fewclip.data.download import load_sources

# The datasets `fewclip download all` fetches: those of the packaged sources table that fewclip
# reads (imagenet included: its job fetches classnames.txt, verifies, and explains what to fetch
# by hand).
DOWNLOAD_DATASETS = [name for name in load_sources()["datasets"] if name in DATASETS]
DOWNLOAD_EXTRA_ARGS = shlex.join(
    (["--sources", str(config["download_sources"])] if config.get("download_sources") else [])
    + [arg for mirror in config.get("download_mirrors", []) for arg in ("--mirror", str(mirror))]
)


rule download:
    output:
        marker=paths.DOWNLOAD_MARKER.replace("{data_root}", DATA_ROOT),
    params:
        root=lambda wc, output: os.path.dirname(output.marker),
        extra=DOWNLOAD_EXTRA_ARGS,
    log:
        "logs/download/{dataset}.log",
    benchmark:
        "benchmarks/download/{dataset}.tsv"
    conda:
        "../envs/fewclip.yaml"
    wildcard_constraints:
        dataset="|".join(map(re.escape, DOWNLOAD_DATASETS)),
    shell:
        "fewclip download {wildcards.dataset:q} --data-root {params.root:q} {params.extra} > {log:q} 2>&1"
