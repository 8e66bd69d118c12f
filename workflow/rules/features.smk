rule encode:
    """Encode one (backbone, dataset) once: the test split, the union of its manifests' images and
    the class text features. Every later job reuses the store."""
    input:
        data_ready(),
        manifests=lambda wc: manifests_for(wc.backbone, wc.dataset),
        weights=lambda wc: weights_file(wc.backbone),
        split_file=lambda wc: split_file(wc.dataset),
    output:
        store=paths.STORE,
    params:
        args=encode_args("store"),
        weights=lambda wc: weights_id(wc.backbone),
        source=STORE_SOURCE,
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


rule encode_views:
    """The `views` augmented views of every few-shot train image of the store (only the cells
    whose method reads stored views depend on them: more views re-run those and nothing else).
    After rule encode: a new store (new weights, new data) is newer than views.json."""
    input:
        store=paths.STORE,
        manifests=lambda wc: manifests_for(wc.backbone, wc.dataset),
        weights=lambda wc: weights_file(wc.backbone),
    output:
        views=paths.VIEWS,
    params:
        args=encode_args("views"),
        weights=lambda wc: weights_id(wc.backbone),
        source=STORE_SOURCE,
        out=lambda wc, output: os.path.dirname(output.views),
    threads: encode_threads
    resources:
        gpu=encode_gpu,
        mem_mb=encode_mem,
        runtime=encode_runtime,
    log:
        "logs/encode_views/{backbone}/{dataset}.log",
    benchmark:
        "benchmarks/encode_views/{backbone}/{dataset}.tsv"
    conda:
        "../envs/fewclip.yaml"
    shell:
        "fewclip encode {params.args} --out {params.out:q} > {log:q} 2>&1"
