"""A grid killed with SIGKILL at several points and rerun with --rerun-incomplete ends
with exactly the results of an uninterrupted run, and no partial metrics.json is ever readable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import yaml

from conftest import BIN, REPO

TIMINGS = {"train_seconds", "eval_seconds", "peak_mem_mb"}
KILL_AFTER = [4, 9, 14, 20, 27]  # seconds into successive attempts: 5 different points


def _config(path: Path, data: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "data_root": str(data), "generate_data": "none", "seeds": [1], "device": "cpu", "views": 10,
        "templates": ["dataset"], "reports": False,
        "backbones": {"tiny": {"model": "fewclip-tiny-vit", "pretrained": "none"}},
        "method_params": {"coop": {"epochs": 3}, "clip_adapter": {"epochs": 3}},
        "protocols": {"fewshot": {"datasets": ["dtd"], "shots": [1, 2],
                                  "runs": [{"backbone": "tiny",
                                            "methods": ["zeroshot", "tip_adapter", "clip_adapter", "coop"]}]}},
    }))
    return path


def _snakemake(workdir: Path, cfg: Path, kill_after: float | None = None) -> int:
    """A run as a user restarts one after a crash: `--unlock` (a killed Snakemake leaves its lock),
    then the same command with --rerun-incomplete."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(cfg), "--cores", "2", "--rerun-incomplete", "--quiet"]
    if (workdir / ".snakemake").exists():
        subprocess.run([*cmd, "--unlock"], env=env, capture_output=True, check=True)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        return proc.wait(timeout=kill_after if kill_after is not None else 600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it started
        proc.wait()
        return -9


class MetricsWatcher(threading.Thread):
    """Reads every metrics.json as often as it can; records any that is not a complete record."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root, self.bad, self.reads, self.stop = root, [], 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            for path in self.root.glob("results/runs/**/metrics.json"):
                try:
                    m = json.loads(path.read_text())
                    self.reads += 1
                    if m.get("status") != "complete" or "top1" not in m:
                        self.bad.append(str(path))
                except FileNotFoundError:
                    pass
                except json.JSONDecodeError:
                    self.bad.append(str(path))
            time.sleep(0.01)


def _results(workdir: Path) -> dict:
    out = {}
    for path in sorted((workdir / "results" / "runs").glob("**/metrics.json")):
        m = json.loads(path.read_text())
        m = {k: v for k, v in m.items() if k not in TIMINGS and k != "train"}
        m["provenance"] = {k: v for k, v in m["provenance"].items() if k != "config_hash"}
        preds = pd.read_parquet(path.parent / "predictions.parquet")
        preds["top5"] = preds["top5"].map(list)
        out[str(path.relative_to(workdir))] = (m, preds.to_dict("list"))
    return out


def test_killed_grid_reruns_to_the_uninterrupted_result(tmp_path, fixture_root):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    cfg = _config(tmp_path / "cfg.yaml", fixture_root)
    assert _snakemake(clean, cfg) == 0
    expected = _results(clean)
    assert len(expected) == 7  # 3 methods x 2 shots + zero-shot once (it reads no few-shot sample)

    watcher = MetricsWatcher(crashed)
    watcher.start()
    killed = 0
    for seconds in KILL_AFTER:
        killed += _snakemake(crashed, cfg, kill_after=seconds) == -9
    assert _snakemake(crashed, cfg) == 0
    watcher.stop.set()
    watcher.join()

    assert killed >= 3, "the grid finished before most kill points: make it longer"
    assert watcher.bad == [], f"partial metrics.json were readable: {watcher.bad}"
    assert watcher.reads > 0
    got = _results(crashed)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], key


def test_two_writers_of_one_run_directory_cannot_both_succeed(tmp_path, fixture_root):
    """A second `fewclip run` on an --out that another live process is writing is refused
    (naming the holder's pid and host); once the holder is killed, its lock is stale and taken over."""
    import platform

    out = tmp_path / "run"

    def args(epochs):
        return [str(BIN / "fewclip"), "run", "--data-root", str(fixture_root), "--dataset", "dtd",
                "--method", "clip_adapter", "--backbone", "fewclip-tiny-vit", "--pretrained", "none",
                "--device", "cpu", "--features", str(tmp_path / "features"), "--shots", "1", "--seed", "1",
                "--out", str(out), "--set", f"epochs={epochs}"]

    first = subprocess.Popen(args(100000), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (out / "train_state.pt").exists():  # the first writer holds the lock and trains
            assert first.poll() is None, "the first writer ended early"
            assert time.time() < deadline, "the first writer never started training"
            time.sleep(0.2)
        second = subprocess.run(args(100000), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        assert "Traceback" not in second.stderr
        assert "being written by another fewclip process" in second.stderr
        assert f"pid {first.pid} on host {platform.node()}" in second.stderr
        assert first.poll() is None  # the holder is unharmed
    finally:
        first.kill()
        first.wait()
    assert not (out / "metrics.json").exists()
    assert json.loads((out / ".fewclip-run.lock").read_text())["pid"] == first.pid  # left by the killed writer
    (out / "train_state.pt").unlink()  # a shorter run is another run: start it from scratch
    third = subprocess.run(args(2), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "stale lock" in third.stderr and str(first.pid) in third.stderr
    assert (out / "metrics.json").is_file() and not (out / ".fewclip-run.lock").exists()
