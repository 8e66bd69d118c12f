# `batch_cells: true`: one job per (protocol, backbone, dataset, method) runs all its
# (shots, seed) cells in one process. For CPU demos and grids of cheap cells, where Python
# start-up (~3 s) would dominate; every cell still gets its own declared run directory.
# One rule per configured protocol (their shot lists differ).


for batch_protocol in config["protocols"]:

    rule:
        name:
            f"fit_batch_{batch_protocol}"
        input:
            unpack(batch_inputs),
        output:
            batch_outputs(batch_protocol),
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
            protocol=batch_protocol,
        shell:
            "fewclip run {params.args} > {log:q} 2>&1"
