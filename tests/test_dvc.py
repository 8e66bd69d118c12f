"""dvc.yaml: push a fixture grid's runs, clone fresh, `dvc pull`, `dvc repro` → identical reports/, no training."""

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from test_analysis_fixtures import make_runs

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRACKED = ["dvc.yaml", ".gitignore", "src/fewclip/analysis", "src/fewclip/grid.py",
           "src/fewclip/data/published_results.csv"]


def _env(tmp_path):
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),  # no user git/dvc config leaks in
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
        "DVC_NO_ANALYTICS": "1",
    }


def _sh(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=True)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def _copy_project(dest: Path) -> None:
    for rel in TRACKED:
        src = REPO / rel
        if not src.exists():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / rel)


def test_stages_never_train():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(stages) == {"collect", "report"}
    for stage in stages.values():
        verb = stage["cmd"].split()[1]
        assert verb in {"collect", "report"}
        assert not any("results/runs" == out for out in stage.get("outs", []))  # runs are inputs only


def test_push_clone_pull_repro_rebuilds_reports(tmp_path):
    env = _env(tmp_path)
    origin, remote, clone = tmp_path / "origin", tmp_path / "remote", tmp_path / "clone"
    origin.mkdir()
    remote.mkdir()
    _copy_project(origin)
    make_runs(origin, n_test=40)
    _sh("git init -q && dvc init -q", origin, env)
    ignored = subprocess.run(["git", "check-ignore", "-q", "results/runs.dvc"], cwd=origin, env=env).returncode == 0
    assert not ignored, (
        "the project's .gitignore ignores results/runs.dvc, so `dvc add results/runs` refuses and the runs "
        "cannot be versioned: in .gitignore, ignore `/results/?*` and re-include `!/results/*.dvc`"
    )
    _sh(f"dvc remote add -d local {remote}", origin, env)
    _sh("dvc add results/runs", origin, env)
    _sh("dvc repro -q", origin, env)
    assert (origin / "reports" / "tables" / "fewshot_rn50_4shot.csv").is_file()
    _sh("git add -A && git commit -q -m grid && dvc push -q", origin, env)

    _sh(f"git clone -q {origin} {clone}", tmp_path, env)
    assert not (clone / "results" / "runs").exists() and not (clone / "reports").exists()
    _sh("dvc pull -q", clone, env)  # the README's `dvc pull && dvc repro`
    assert (clone / "results" / "runs").is_dir() and (clone / "reports" / "tables").is_dir()
    # Rebuild for real: drop what was pulled and rerun both stages without DVC's run-cache.
    shutil.rmtree(clone / "reports")
    for p in (clone / "results").glob("all_runs.*"):
        p.unlink()
    _sh("dvc repro -q --no-run-cache", clone, env)
    assert "up to date" in _sh("dvc status", clone, env).lower()
    _sh("dvc plots show -q -o plots_html", clone, env)  # the shot curves as a Vega-Lite page
    assert '"shots"' in (clone / "plots_html" / "index.html").read_text()

    before, after = origin / "reports", clone / "reports"
    tables = sorted(p.relative_to(before) for p in before.rglob("*") if p.suffix in {".csv", ".md", ".tex"})
    assert len(tables) > 20
    for rel in tables:
        assert filecmp.cmp(before / rel, after / rel, shallow=False), rel
    figures = sorted(p.relative_to(before) for p in (before / "figures").iterdir())
    assert figures and all((after / rel).is_file() for rel in figures)
    # Nothing was trained: the runs are byte-identical to what was pushed, and no new run dirs appeared.
    runs_before = sorted(p.relative_to(origin) for p in (origin / "results" / "runs").rglob("*") if p.is_file())
    runs_after = sorted(p.relative_to(clone) for p in (clone / "results" / "runs").rglob("*") if p.is_file())
    assert runs_before == runs_after
    assert all(filecmp.cmp(origin / r, clone / r, shallow=False) for r in runs_before)
