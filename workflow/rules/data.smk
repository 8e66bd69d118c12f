rule generate_data:
    """Write a generated data root (`generate_data: fixtures` = tiny replicas of all 15 layouts)."""
    output:
        marker=f"{DATA_ROOT}/.fewclip-{{kind}}.json",
    params:
        root=lambda wc, output: os.path.dirname(output.marker),
    log:
        "logs/generate_data/{kind}.log",
    benchmark:
        "benchmarks/generate_data/{kind}.tsv"
    conda:
        "../envs/fewclip.yaml"
    wildcard_constraints:
        kind="fixtures|demo",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "fewclip generate {wildcards.kind:q} --out {params.root:q} > {log:q} 2>&1"


rule split:
    """The few-shot manifest of one (dataset, K, seed): every method of the cell reads it."""
    input:
        data_ready(),
        split_file=lambda wc: split_file(wc.dataset),
    output:
        manifest=paths.MANIFEST,
    params:
        root=lambda wc: DATA_ROOT,
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    group:
        "splits"
    log:
        "logs/split/{dataset}/{preset}/{shots}shot_seed{seed}.log",
    benchmark:
        "benchmarks/split/{dataset}/{preset}/{shots}shot_seed{seed}.tsv"
    conda:
        "../envs/fewclip.yaml"
    shell:
        "fewclip split --data-root {params.root:q} --dataset {wildcards.dataset:q} --shots {wildcards.shots}"
        " --seed {wildcards.seed} --preset {wildcards.preset} --out {output.manifest:q} > {log:q} 2>&1"
