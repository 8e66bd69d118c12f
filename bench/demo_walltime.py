"""Wall time of the embedded demo (issue 7): `snakemake --cores all` on the default config in a
fresh clone, then the demo's quality checks, read from the collected table.

    python bench/demo_walltime.py [--keep DIR] [--make] [--json out.json]

With --make it times `make demo` itself in the folder: `make setup` (the venv install), then the
workflow through make with the folder's own venv; without, the workflow with this Python's.
Prints the wall time, the time per rule (from Snakemake's benchmark files) and, per check,
whether it holds: zero-shot ≥ 2× chance on every demo dataset; at 16 shots each trained method
vs zero-shot on the source; zero-shot on every DG target below the source. Without --keep the
temporary clone (about 6 GB with --make's venv) is removed after a successful run; a failed one
is left in place, with its log under logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", help="run in this folder (kept) instead of a temporary one")
    p.add_argument("--make", action="store_true", help="time `make setup` + `make demo` (a fresh clone's install too)")
    p.add_argument("--json")
    args = p.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="fewclip-demo-"))
    if not (work / "Snakefile").exists():
        subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
    install = None
    if args.make:  # the user's two steps, with the PATH they would have (not this venv's)
        path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if Path(d) != Path(sys.executable).parent)
        env = {**os.environ, "PATH": path}
        t0 = time.perf_counter()
        subprocess.run(["make", "setup"], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        install = time.perf_counter() - t0
        cmd = ["make", "demo"]
    else:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        cmd = ["snakemake", "--cores", "all", "--quiet"]
    t0 = time.perf_counter()
    (work / "logs").mkdir(exist_ok=True)
    with open(work / "logs" / "demo_walltime.log", "w") as log:
        subprocess.run(cmd, cwd=work, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0

    per_rule: dict[str, float] = {}
    for tsv in (work / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(work / "benchmarks").parts[0]
        per_rule[rule] = per_rule.get(rule, 0.0) + float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])

    t = pd.read_parquet(work / "results" / "all_runs.parquet")
    checks = []
    zs = t[(t.method == "zeroshot") & (t.eval_split == "test")]  # all classes (not base-to-new halves)
    for ds, g in zs.groupby("eval_dataset"):
        acc, chance = g.top1.mean(), 100.0 / g.n_classes.iloc[0]
        checks.append((f"zero-shot {ds} {acc:.1f} >= 2 x chance {2 * chance:.1f}", acc >= 2 * chance))
    fs = t[(t.protocol == "fewshot") & (t.dataset == "demo_shapes") & (t.shots == 16)]
    means = fs.groupby("method").top1.mean()
    for method, acc in means.drop("zeroshot").items():
        checks.append((f"16-shot demo_shapes {method} {acc:.1f} > zero-shot {means['zeroshot']:.1f}",
                       acc > means["zeroshot"]))
    dg = t[(t.protocol == "dg") & (t.method == "zeroshot")]
    if "eval_protocol" in dg:  # DG targets share the source's classes; cross-dataset ones have their own
        dg = dg[dg.eval_protocol.fillna("dg") != "cross_dataset"]
    dg = dg.groupby("eval_dataset").top1.mean()
    for target, acc in dg.drop("demo_shapes").items():
        checks.append((f"zero-shot DG {target} {acc:.1f} < source {dg['demo_shapes']:.1f}", acc < dg["demo_shapes"]))

    if install is not None:
        print(f"make demo in {work}: {(install + wall) / 60:.1f} min = install (make setup) {install / 60:.1f} min "
              f"+ workflow {wall / 60:.1f} min ({os.cpu_count()} cores)")
    else:
        print(f"demo: snakemake --cores all in {work}: {wall / 60:.1f} min wall ({os.cpu_count()} cores)")
    for rule, s in sorted(per_rule.items(), key=lambda kv: -kv[1]):
        print(f"  {rule:22s} {s:7.1f} s (sum over jobs)")
    for text, ok in checks:
        print(f"  [{'ok' if ok else 'NO'}] {text}")
    if args.json:
        Path(args.json).write_text(json.dumps({"wall_s": wall, "install_s": install, "per_rule_s": per_rule,
                                               "checks": [{"check": c, "ok": bool(ok)} for c, ok in checks]}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
