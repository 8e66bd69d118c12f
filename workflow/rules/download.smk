# Getting the data as part of the DAG: one rule per dataset, each running `fewclip download`
# (fetch -> verify size/checksum -> extract -> arrange the CoOp layout -> check) and producing
# the dataset's marker `<data_root>/.fewclip-download-<dataset>.json`.
#
# Not included by default (it fetches tens of GB and ImageNet must be fetched by hand). To use it,
# add after the include of common.smk in the Snakefile:
#     include: "workflow/rules/download.smk"
# and ask for a marker, e.g. `snakemake -c1 <data_root>/.fewclip-download-dtd.json`.
# Optional config keys: download_sources (another sources table, JSON), download_mirrors (list of
# URL bases tried first). Needs DATA_ROOT (defined in common.smk).
import os
import shlex

DOWNLOAD_DATASETS = [
    "imagenet",  # licensed: the rule fetches classnames.txt, verifies, and explains what to fetch by hand
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
    "imagenet_v2",
    "imagenet_sketch",
    "imagenet_a",
    "imagenet_r",
]


def download_marker(dataset):
    return f"{DATA_ROOT}/.fewclip-download-{dataset}.json"


def download_extra_args():
    args = []
    if config.get("download_sources"):
        args += ["--sources", config["download_sources"]]
    for mirror in config.get("download_mirrors", []):
        args += ["--mirror", mirror]
    return shlex.join(str(a) for a in args)


for _dataset in DOWNLOAD_DATASETS:

    rule:
        name:
            f"download_{_dataset}"
        output:
            marker=download_marker(_dataset),
        params:
            dataset=_dataset,
            root=lambda wc, output: os.path.dirname(output.marker),
            extra=download_extra_args(),
        log:
            f"logs/download/{_dataset}.log",
        benchmark:
            f"benchmarks/download/{_dataset}.tsv"
        conda:
            "../envs/fewclip.yaml"
        shell:
            "fewclip download {params.dataset:q} --data-root {params.root:q} {params.extra} > {log:q} 2>&1"
