rule encode:
    """Encode one (backbone, dataset) once: test split, the union of its manifests' images,
    their augmented views, and the class text features. Every later job reuses the store."""
    input:
        data_ready(),
        manifests=lambda wc: manifests_for(wc.backbone, wc.dataset),
        weights=lambda wc: workflow_weights(wc.backbone),
    output:
        store=paths.STORE,
    params:
        args=encode_args,
        out=lambda wc, output: os.path.dirname(output.store),
    threads: encode_threads
    resources:
        gpu=encode_gpu,
        mem_mb=encode_mem,
        runtime=encode_runtime,
    log:
        "logs/encode/{backbone}/{dataset}.log",
    benchmark:
        "benchmarks/encode/{backbone}/{dataset}.tsv"
    conda:
        "../envs/fewclip.yaml"
    shell:
        "fewclip encode {params.args} --out {params.out:q} > {log:q} 2>&1"
