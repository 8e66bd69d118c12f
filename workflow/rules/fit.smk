rule fit:
    """One grid cell of a feature-level method (needs = "features"): fit on the stored
    features of the few-shot manifest and evaluate on the test split (DG cells also on every
    target; base-to-new cells also on the new classes). CPU only, seconds long: on a cluster
    the `features` group packs many of them into one submission."""
    input:
        unpack(fit_inputs),
    output:
        metrics=f"{paths.RUN_DIR}/metrics.json",
        predictions=f"{paths.RUN_DIR}/predictions.parquet",
    params:
        args=fit_args,
        weights=lambda wc: weights_id(wc.backbone),
        run=lambda wc, output: os.path.dirname(output.metrics),
    threads: threads_for
    resources:
        gpu=gpu_for,
        mem_mb=mem_for,
        runtime=runtime_for,
    group:
        fit_group
    log:
        "logs/fit/{protocol}/{backbone}/{dataset}/{method}/{shots}shot_seed{seed}.log",
    benchmark:
        "benchmarks/fit/{protocol}/{backbone}/{dataset}/{method}/{shots}shot_seed{seed}.tsv"
    conda:
        "../envs/fewclip.yaml"
    wildcard_constraints:
        method=FEATURE_METHODS_RE,
    shell:
        "fewclip run {params.args} --manifest {input.manifest:q} --out {params.run:q} > {log:q} 2>&1"


# The image-encoder methods (needs = "images"): on `device`, with a GPU unless `device: cpu`.
use rule fit as fit_gpu with:
    wildcard_constraints:
        method=IMAGE_METHODS_RE,
