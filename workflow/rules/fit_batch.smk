# `batch_cells: true`: one job per (protocol, backbone, dataset, side) runs all its (method,
# shots, seed) cells in one process; the sides are the image methods (needs = "images", on
# `device`) and the feature-level ones (CPU). For CPU demos and grids of cheap cells, where
# Python start-up (~3 s, ~6 s with open_clip) would dominate; every cell still gets its own
# declared run directory. One rule per (protocol, backbone, side), and per K list when a few-shot
# run chose its own (rule, log and benchmark names end in `_k4`): their outputs differ.
import re

for batch_protocol, batch_backbone, batch_side, batch_shots_, batch_methods in batch_groups():
    batch_threads, batch_gpu, batch_mem, batch_runtime = batch_resources(batch_protocol, batch_side, batch_methods,
                                                                         batch_shots_)
    batch_part = batch_side + batch_suffix(batch_protocol, batch_shots_)
    batch_name = "_".join(["fit_batch", batch_protocol, re.sub(r"\W", "_", batch_backbone), batch_part])

    rule:
        name:
            batch_name
        input:
            unpack(batch_inputs(batch_methods, batch_shots_)),
        output:
            batch_outputs(batch_protocol, batch_methods, batch_shots_),
        params:
            args=batch_args(batch_methods, batch_shots_),
            weights=lambda wc: weights_id(wc.backbone),
        threads: batch_threads
        resources:
            gpu=batch_gpu,
            mem_mb=batch_mem,
            runtime=batch_runtime,
        log:
            f"logs/fit_batch/{{protocol}}/{{backbone}}/{{dataset}}/{batch_part}.log",
        benchmark:
            f"benchmarks/fit_batch/{{protocol}}/{{backbone}}/{{dataset}}/{batch_part}.tsv"
        conda:
            "../envs/fewclip.yaml"
        wildcard_constraints:
            protocol=batch_protocol,
            backbone=re.escape(batch_backbone),
        shell:
            "fewclip run {params.args} > {log:q} 2>&1"
