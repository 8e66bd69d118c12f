"""The shipped SLURM profile on a real single-node SLURM cluster started by the test itself.

tests/slurm/cluster.sh installs Debian's slurm-wlm, munge, slurmdbd and MariaDB if missing
(apt-get), starts the daemons on localhost and stops exactly the PIDs it started. Two
clusters, one after the other:
- with accounting (slurmdbd + MariaDB): the plugin's default `sacct` status path; a tiny grid
  (split → encode → fit) runs through SLURM and its results equal a local run's;
- without accounting: `slurm-status-command: squeue`.
Every Snakemake call runs under `timeout -k` (the plugin can hang when status checks fail).
As root (CI: this machine) they always run; a missing package or unreachable apt fails the
test. Only a non-root run outside CI skips, with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
LOCK = Path("/tmp/fewclip-slurm-test.lock")  # one test cluster on this machine at a time (fixed ports)
SNAKEMAKE_TIMEOUT = 240


def _require_root():
    if os.geteuid() != 0:
        pytest.fail("the SLURM tests install Debian packages and start SLURM daemons, which needs root; "
                    "run them as root (CI does), or deselect them with `pytest -m 'not slurm'`")


def _sh(*args, env=None, timeout=300):
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@contextlib.contextmanager
def slurm_cluster(accounting: bool):
    """Install if needed, start a cluster, yield its environment; always stop what was started."""
    _require_root()
    LOCK.touch(exist_ok=True)
    with open(LOCK) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _sh(CLUSTER, "install", timeout=900)
        # Not under pytest's tmp_path (mode 0700): munged and MariaDB run as their own users.
        state_dir = Path(tempfile.mkdtemp(prefix="fewclip-slurm-", dir="/tmp"))
        state_dir.chmod(0o755)
        try:
            _sh(CLUSTER, "start", state_dir, "accounting" if accounting else "none", timeout=180)
            env = {**os.environ, "SLURM_CONF": str(state_dir / "etc" / "slurm.conf"),
                   "PATH": f"{state_dir / 'bin'}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"}
            yield env
        finally:
            stop = subprocess.run([str(CLUSTER), "stop", str(state_dir)], capture_output=True, text=True, timeout=120)
            if stop.returncode == 0:
                shutil.rmtree(state_dir, ignore_errors=True)
            else:
                print(f"stopping the test cluster failed; state kept in {state_dir}:\n{stop.stderr}")


def tiny_config(tmp: Path, root: Path) -> Path:
    """zeroshot on one fixture dataset, 1 shot, 2 seeds (one cell: zero-shot reads no few-shot sample,
    so it runs at the first seed only), tiny random ViT, CPU: split, encode, fit."""
    cfg = {
        "data_root": str(root), "generate_data": "none", "preset": "clean", "seeds": [1, 2], "device": "cpu",
        "views": 0, "templates": ["dataset"], "reports": False,
        "backbones": {"tiny": {"model": "fewclip-tiny-vit", "pretrained": "none"}},
        "protocols": {"fewshot": {"datasets": ["eurosat"], "shots": [1],
                                  "runs": [{"backbone": "tiny", "methods": ["zeroshot"]}]}},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_snakemake(workdir: Path, env: dict, *args, timeout=SNAKEMAKE_TIMEOUT) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = ["timeout", "-k", "10", str(timeout), str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
           *map(str, args)]
    out = open(workdir / "snakemake.out", "w")
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


def finish_snakemake(proc: subprocess.Popen, workdir: Path, timeout=SNAKEMAKE_TIMEOUT) -> str:
    rc = proc.wait(timeout=timeout + 30)  # `timeout -k` ends it before this
    out = (workdir / "snakemake.out").read_text()
    assert rc == 0, f"snakemake failed (rc={rc}; 124/137 = timed out):\n{out[-6000:]}"
    return out


def snakemake(workdir: Path, env: dict, *args, timeout=SNAKEMAKE_TIMEOUT) -> str:
    return finish_snakemake(start_snakemake(workdir, env, *args, timeout=timeout), workdir, timeout)


def slurm_args(status_command: str | None):
    args = ["--workflow-profile", PROFILE, "--slurm-init-seconds-before-status-checks", "2",
            "--slurm-keep-successful-logs"]
    if status_command:
        args += ["--slurm-status-command", status_command]
    return args


def metrics_by_cell(workdir: Path) -> dict:
    out = {}
    for path in sorted((workdir / "results" / "runs").rglob("metrics.json")):
        m = json.loads(path.read_text())
        out[str(path.relative_to(workdir))] = m
    return out


def _comparable(m: dict) -> dict:
    """A metrics.json without what legitimately differs between two runs (timings, memory, provenance)."""
    return {k: v for k, v in m.items() if k != "provenance" and "seconds" not in k and "peak_mem" not in k}


def test_slurm_profile_with_accounting_runs_the_grid_like_a_local_run(tmp_path, fixture_root):
    cfg = tiny_config(tmp_path, fixture_root)
    with slurm_cluster(accounting=True) as env:
        # The same grid locally (the default workflow profile), meanwhile, to compare results.
        local_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        local_run = start_snakemake(tmp_path / "local", local_env, "--workflow-profile",
                                    REPO / "workflow/profiles/default", "--cores", "1", "--configfile", cfg)
        work = tmp_path / "slurm"
        out = snakemake(work, env, *slurm_args(None), "--configfile", cfg)
        sacct = _sh("sacct", "-X", "-n", "--parsable2", "--format=JobID,JobName,Partition,State",
                    "--starttime", "now-1hours", env=env).stdout
        finish_snakemake(local_run, tmp_path / "local")
    local = metrics_by_cell(tmp_path / "local")
    assert len(local) == 1

    # Every job went through sbatch: the splits group (the first seed's split), 1 encode, the
    # features group (the one zero-shot fit): a group of one job is submitted as a group too.
    submitted = [line for line in out.splitlines() if "submitted with SLURM jobid" in line]
    assert len(submitted) == 3, out[-4000:]
    assert sum("group_splits" in s for s in submitted) == 1 and sum("group_features" in s for s in submitted) == 1
    rows = [r.split("|") for r in sacct.strip().splitlines()]
    assert len(rows) == 3 and all(r[3] == "COMPLETED" for r in rows), sacct
    assert {r[2] for r in rows} == {"cpu", "gpu"}, sacct  # encode → the profile's gpu partition
    job_ids = {r[0] for r in rows}

    slurm = metrics_by_cell(work)
    assert slurm.keys() == local.keys()
    for cell, m in slurm.items():
        # SLURM_JOB_ID inside the job: the fit ran in one of the cluster's jobs.
        assert m["provenance"]["slurm_job_id"] in job_ids, (cell, m["provenance"])
        assert local[cell]["provenance"]["slurm_job_id"] is None
        assert _comparable(m) == _comparable(local[cell]), cell
    logs = list((work / "logs" / "slurm").rglob("*.log"))
    assert len(logs) == 3, logs


def test_slurm_profile_without_accounting_uses_squeue(tmp_path, fixture_root):
    cfg = tiny_config(tmp_path, fixture_root)
    with slurm_cluster(accounting=False) as env:
        # Without slurmdbd, sacct cannot answer: the squeue status path must see the job finish.
        no_sacct = subprocess.run(["sacct", "-X", "-n"], capture_output=True, text=True, env=env)
        assert no_sacct.returncode != 0 or "disabled" in (no_sacct.stdout + no_sacct.stderr).lower()
        work = tmp_path / "squeue"
        out = snakemake(work, env, "results/splits/eurosat/clean/1shot_seed1.json",
                        "results/splits/eurosat/clean/1shot_seed2.json", *slurm_args("squeue"), "--configfile", cfg)
        queue = _sh("squeue", "--states=all", "-h", "-o", "%i|%j|%T", env=env).stdout
    # sacct fails on this cluster (checked above), so the job's completion was seen by squeue.
    submitted = [line for line in out.splitlines() if "submitted with SLURM jobid" in line]
    assert len(submitted) == 1 and "group_splits" in submitted[0], out[-4000:]
    assert [line.split("|")[2] for line in queue.strip().splitlines()] == ["COMPLETED"], queue
    for seed in (1, 2):
        manifest = json.loads((work / f"results/splits/eurosat/clean/1shot_seed{seed}.json").read_text())
        assert manifest["seed"] == seed and manifest["shots"] == 1
