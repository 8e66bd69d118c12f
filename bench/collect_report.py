"""Aggregation (issue 9.3): `fewclip collect` and `fewclip report` over ~5,000 synthetic run directories.

    python bench/collect_report.py                        # 3 backbones x paper-like grid: 5,310 run dirs
    python bench/collect_report.py --n-resamples 200 --json bench/results_collect_report.json

The run directories come from the analysis tests' generator (tests/test_analysis_fixtures.py:
metrics.json + predictions.parquet per evaluation, honouring the metrics.json contract), for a
paper-like grid: 11 datasets x 10 methods x shots 1-16 x 3 seeds on three backbones (few-shot),
base-to-new on one backbone, DG on ImageNet. Both commands run as subprocesses, the way users
run them (the venv's `fewclip` console script), so the times include interpreter start-up and imports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
            "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
METHODS = ["zeroshot", "linear_probe", "coop", "cocoop", "clip_adapter", "tip_adapter", "tip_adapter_f",
           "vpt", "vlp", "dpt"]


def config(n_backbones: int) -> dict:
    backbones = {"rn50": {"model": "RN50", "pretrained": "openai"},
                 "vitb16": {"model": "ViT-B-16", "pretrained": "openai"},
                 "vitb32": {"model": "ViT-B-32", "pretrained": "openai"}}
    keys = list(backbones)[:n_backbones]
    return {
        "seeds": [1, 2, 3], "preset": "clean", "backbones": {k: backbones[k] for k in keys},
        "baselines": ["zeroshot", "coop"],
        "protocols": {
            "fewshot": {"datasets": DATASETS, "shots": [1, 2, 4, 8, 16],
                        "runs": [{"backbone": k, "methods": METHODS} for k in keys]},
            "base2new": {"datasets": DATASETS, "shots": 16, "runs": [{"backbone": "vitb16", "methods": METHODS}]},
            "dg": {"source": "imagenet", "targets": ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"],
                   "shots": 16, "runs": [{"backbone": "vitb16", "methods": METHODS}]},
        },
    }


def timed(cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if out.returncode != 0:
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {out.returncode}")
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", type=int, default=3, choices=[2, 3], help="backbones in the few-shot grid")
    ap.add_argument("--n-test", type=int, default=100, help="rows of each synthetic predictions.parquet")
    ap.add_argument("--n-resamples", type=int, default=2000, help="bootstrap resamples of `fewclip report` (its default)")
    ap.add_argument("--keep", help="write the runs here and keep them (default: a temp dir, removed)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "tests"))
    from test_analysis_fixtures import make_runs  # the analysis tests' generator

    import yaml

    from fewclip.grid import expand_grid

    load_before = os.getloadavg()  # 2 shared cores: other processes' load changes every time here
    cfg = config(args.backbones)
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fewclip-bench-collect-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        runs = make_runs(tmp, cfg, n_test=args.n_test)
        gen_s = time.perf_counter() - t
        cells = expand_grid(cfg)
        n_metrics = sum(1 for _ in runs.rglob("metrics.json"))
        (tmp / "grid.yaml").write_text(yaml.safe_dump(cfg))
        fewclip = str(Path(sys.executable).parent / "fewclip")  # the console script users run
        table = tmp / "results" / "all_runs.parquet"
        collect_s = timed([fewclip, "collect", "--runs", str(runs), "--out", str(table),
                           "--config", str(tmp / "grid.yaml")], tmp)
        report_s = timed([fewclip, "report", "--table", str(table), "--runs", str(runs),
                          "--out", str(tmp / "reports"), "--config", str(tmp / "grid.yaml"),
                          "--n-resamples", str(args.n_resamples)], tmp)
        # the same report without the per-prediction statistics (no --runs): where the time goes
        report_nopred_s = timed([fewclip, "report", "--table", str(table), "--runs", str(tmp / "none"),
                                 "--out", str(tmp / "reports_table_only"), "--config", str(tmp / "grid.yaml"),
                                 "--n-resamples", str(args.n_resamples)], tmp)
        start_s = timed([fewclip, "--help"], tmp)
        n_report_files = sum(1 for p in (tmp / "reports").rglob("*") if p.is_file())
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    total = collect_s + report_s
    result = {
        "bench": "collect_report", "run_dirs": len(cells), "metrics_files": n_metrics, "n_test": args.n_test,
        "n_resamples": args.n_resamples, "generate_s": gen_s, "collect_s": collect_s, "report_s": report_s,
        "report_without_predictions_s": report_nopred_s, "cli_startup_s": start_s, "total_s": total,
        "report_files": n_report_files,
        "load_avg_1_5_15_before": [round(x, 2) for x in load_before],
        "load_avg_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}",
    }
    print(f"collect + report: {len(cells)} run directories ({n_metrics} metrics.json, {args.n_test}-row "
          f"predictions each), bootstrap {args.n_resamples} resamples; generated in {gen_s:.0f} s")
    print(f"{'step':<52}{'seconds':>9}")
    print(f"{'fewclip collect (--config: missing-cell check)':<52}{collect_s:>9.1f}")
    print(f"{'fewclip report (tables, figures, McNemar, bootstrap)':<52}{report_s:>9.1f}")
    print(f"{'  breakdown: report without --runs (no McNemar/bootstrap)':<52}{report_nopred_s:>9.1f}")
    print(f"{'  breakdown: per-prediction statistics (difference)':<52}{report_s - report_nopred_s:>9.1f}")
    print(f"{'  (fewclip --help: interpreter + CLI start-up)':<52}{start_s:>9.1f}")
    print(f"  (load average before/after, 1/5/15 min: {result['load_avg_1_5_15_before']} / {result['load_avg_1_5_15_after']})")
    ok = "met" if total <= 30 else "NOT met"
    print(f"{'collect + report':<52}{total:>9.1f}   (target <= 30 s: {ok}; {n_report_files} report files)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
