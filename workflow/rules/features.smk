rule encode:
    """Encode one (backbone, dataset) once: test split, the union of its manifests' images,
    their augmented views, and the class text features. Every later job reuses the store."""
    input:
        data_ready(),
        manifests=lambda wc: manifests_for(wc.backbone, wc.dataset),
    output:
        store="results/features/{backbone}/{dataset}/store.json",
    params:
        args=encode_args,
        out=lambda wc, output: os.path.dirname(output.store),
    threads: 2
    resources:
        gpu=lambda wc: 0 if config["device"] == "cpu" else 1,
        mem_mb=lambda wc: 32000 if wc.dataset == "imagenet" else 8000,
        runtime=lambda wc: 240 if wc.dataset == "imagenet" else 60,
    log:
        "logs/encode/{backbone}/{dataset}.log",
    benchmark:
        "benchmarks/encode/{backbone}/{dataset}.tsv"
    conda:
        "../envs/fewclip.yaml"
    shell:
        "fewclip encode {params.args} --out {params.out:q} > {log:q} 2>&1"
