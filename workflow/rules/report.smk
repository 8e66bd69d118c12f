# Results → papers: collect every run into one table, then tables, figures and statistics.
# `snakemake --report reports/report.html` shows the figures and tables with the captions below.
import shlex


localrules:
    collect,
    report,


rule collect:
    """Every run's metrics.json (and eval_* evaluations) → one tidy table, parquet + CSV."""
    input:
        metrics=all_metrics(),
    output:
        table="results/all_runs.parquet",
        csv="results/all_runs.csv",
    params:
        runs=lambda wc, output: os.path.join(os.path.dirname(output.table), "runs"),
    log:
        "logs/report/collect.log",
    benchmark:
        "benchmarks/report/collect.tsv"
    conda:
        "../envs/fewclip.yaml"
    shell:
        "fewclip collect --runs {params.runs:q} --out {output.table:q} > {log:q} 2>&1"


rule report:
    """Few-shot, base-to-new, DG, efficiency and paper-vs-ours tables; shot curves, DG bars and
    critical-difference diagrams; significance tests (reads the runs' per-image predictions)."""
    input:
        table="results/all_runs.parquet",
        metrics=all_metrics(),
    output:
        tables=report(
            directory("reports/tables"),
            patterns=["{name}.csv"],
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "{name}"},
        ),
        figures=report(
            directory("reports/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
        stats=report(
            directory("reports/stats"),
            patterns=["{name}.csv"],
            caption="../report/stats.rst",
            # not "Statistics": Snakemake's report has its own Statistics page, and the two
            # section targets collide (docutils: Duplicate explicit target name "statistics")
            category="Significance tests",
            labels={"test": "{name}"},
        ),
        plots=directory("reports/plots"),
        index="reports/README.md",
    params:
        runs=lambda wc, input: os.path.join(os.path.dirname(input.table), "runs"),
        out=lambda wc, output: os.path.dirname(output.index),
        # the config's baselines, else fewclip report's default (fewclip.analysis.results.DEFAULT_BASELINES)
        baselines=shlex.join(["--baselines", *config["baselines"]]) if config.get("baselines") else "",
    log:
        "logs/report/report.log",
    benchmark:
        "benchmarks/report/report.tsv"
    conda:
        "../envs/fewclip.yaml"
    shell:
        "fewclip report --table {input.table:q} --runs {params.runs:q} --out {params.out:q}"
        " {params.baselines} > {log:q} 2>&1"
