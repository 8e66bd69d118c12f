"""workflow/rules/report.smk: `collect` and `report` run through Snakemake, and `--report` holds the figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

from test_analysis_fixtures import grid_config, make_runs

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_snakemake_report_contains_figures(tmp_path):
    make_runs(tmp_path)
    (tmp_path / "config.yaml").write_text(json.dumps(grid_config()))
    (tmp_path / "Snakefile").write_text(f"""
from fewclip.grid import expand_grid

configfile: "config.yaml"
report: "{REPO}/workflow/report/workflow.rst"


def all_metrics():
    return [f"{{c.run_dir}}/metrics.json" for c in expand_grid(config)]


include: "{REPO}/workflow/rules/report.smk"


rule all:
    input:
        "reports/README.md",
    default_target: True
""")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    run = lambda *args: subprocess.run([str(BIN / "snakemake"), *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    res = run("-c1", "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "reports" / "figures" / "fewshot_curves_rn50.png").is_file()
    assert (tmp_path / "logs" / "report" / "report.log").is_file()
    assert (tmp_path / "benchmarks" / "report" / "collect.tsv").is_file()
    res = run("--report", "report.html")
    assert res.returncode == 0, res.stderr[-3000:]
    html = (tmp_path / "report.html").read_text()
    # issue 18.1: no reStructuredText/docutils message reaches the reader or the terminal
    for noise in ("System Message", "Duplicate explicit target", "WARNING/2", "ERROR/3"):
        assert noise not in html, noise
        assert noise not in res.stderr + res.stdout, noise
    assert "Significance tests" in html
    for name in ("fewshot_curves_rn50.png", "dg_vitb16_16shot.png", "cd_fewshot_rn50_4shot.png", "fewshot_rn50_4shot.csv"):
        assert name in html, name
