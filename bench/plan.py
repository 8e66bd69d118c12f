"""Planning time of the full paper grid: `snakemake -n` on config/paper.yaml over a fixture root.

    python bench/plan.py            # prints the job count per rule and the seconds (target <= 10 s)

The data root holds the 15 tiny fixture replicas (`fewclip generate fixtures`), written to a
temporary folder first; the dry run plans every job of the grid without running any.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET_S = 10.0


def main() -> int:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with tempfile.TemporaryDirectory(prefix="fewclip-plan-") as tmp:
        root = Path(tmp) / "data"
        subprocess.run([str(BIN / "fewclip"), "generate", "fixtures", "--out", str(root)], check=True, env=env,
                       capture_output=True)
        cmd = [str(BIN / "snakemake"), "-n", "--quiet", "rules", "--snakefile", str(REPO / "Snakefile"),
               "--configfile", str(REPO / "config" / "paper.yaml"), "--config", f"data_root={root}",
               "--directory", str(Path(tmp) / "work")]
        t0 = time.perf_counter()
        proc = subprocess.run(["timeout", "-k", "10", "600", *cmd], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        print(out[-5000:], file=sys.stderr)
        return proc.returncode
    table = out.split("Job stats:", 1)[1].splitlines()[3:]
    counts = {}
    for line in table:
        m = re.match(r"^(\w+)\s+(\d+)\s*$", line)
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    for rule, n in counts.items():
        print(f"{rule:10s} {n:6d}")
    status = "ok" if seconds <= TARGET_S else f"over the {TARGET_S:.0f} s target"
    print(f"planned {counts.get('total', sum(counts.values()))} jobs of config/paper.yaml in {seconds:.1f} s "
          f"({status}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
