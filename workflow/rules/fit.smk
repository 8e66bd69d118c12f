RUN = "results/runs/{protocol}/{backbone}/{dataset}/{method}/{shots}shot/seed{seed}"


rule fit:
    """One grid cell: fit the method on the few-shot manifest and evaluate it on the test split
    (DG cells also on every target; base-to-new cells also on the new classes)."""
    input:
        unpack(fit_inputs),
    output:
        metrics=f"{RUN}/metrics.json",
        predictions=f"{RUN}/predictions.parquet",
    params:
        args=fit_args,
        run=lambda wc, output: os.path.dirname(output.metrics),
    threads: 2
    resources:
        gpu=gpu_for,
        mem_mb=mem_for,
        runtime=runtime_for,
    log:
        "logs/fit/{protocol}/{backbone}/{dataset}/{method}/{shots}shot_seed{seed}.log",
    benchmark:
        "benchmarks/fit/{protocol}/{backbone}/{dataset}/{method}/{shots}shot_seed{seed}.tsv"
    conda:
        "../envs/fewclip.yaml"
    shell:
        "fewclip run {params.args} --manifest {input.manifest:q} --out {params.run:q} > {log:q} 2>&1"
