# `batch_cells: true`: one job per (protocol, backbone, dataset, method) runs all its
# (shots, seed) cells in one process. For CPU demos and grids of cheap cells, where Python
# start-up (~3 s) would dominate; every cell still gets its own declared run directory.


rule fit_batch_fewshot:
    input:
        unpack(batch_inputs),
    output:
        batch_outputs("fewshot"),
    params:
        args=batch_args,
    threads: threads_for
    resources:
        gpu=gpu_for,
        mem_mb=mem_for,
        runtime=runtime_for,
    log:
        "logs/fit_batch/{protocol}/{backbone}/{dataset}/{method}.log",
    benchmark:
        "benchmarks/fit_batch/{protocol}/{backbone}/{dataset}/{method}.tsv"
    conda:
        "../envs/fewclip.yaml"
    wildcard_constraints:
        protocol="fewshot",
    shell:
        "fewclip run {params.args} > {log:q} 2>&1"


use rule fit_batch_fewshot as fit_batch_base2new with:
    output:
        batch_outputs("base2new"),
    wildcard_constraints:
        protocol="base2new",


use rule fit_batch_fewshot as fit_batch_dg with:
    output:
        batch_outputs("dg"),
    wildcard_constraints:
        protocol="dg",
