"""The README's "Add a method" example: one file, registered through FEWCLIP_PLUGINS, runs
through `fewclip run` without any change to fewclip."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from fewclip.data.fixtures import write_fixture

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"


def _example() -> str:
    """The first Python block of docs/adding-a-method.md: the test runs what the docs show."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, f"{DOC} has no python example"
    return blocks[0]


def _fewclip(args, env):
    script = Path(sys.executable).parent / "fewclip"  # the installed console script
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "fewclip.cli"]
    cmd += args
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_plugin_method_runs_through_fewclip_run(tmp_path):
    plugin = tmp_path / "nearest_mean.py"
    plugin.write_text(_example())
    data = tmp_path / "data"
    write_fixture("oxford_pets", data, n_classes=4, n_train=3, n_val=2, n_test=3)
    env = {**os.environ, "FEWCLIP_PLUGINS": str(plugin)}
    common = ["--data-root", str(data), "--dataset", "oxford_pets", "--method", "nearest_mean",
              "--backbone", "fewclip-tiny-vit", "--pretrained", "none", "--shots", "2", "--seed", "1",
              "--features", str(tmp_path / "features"), "--device", "cpu"]

    out = tmp_path / "runs" / "nearest_mean"
    proc = _fewclip(["run", *common, "--out", str(out), "--set", "scale=50"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "nearest_mean" and m["status"] == "complete"
    assert m["top1"] is not None and m["n_test"] == 4 * 3 and m["n_classes"] == 4
    assert m["hparams"]["scale"] == 50.0 and m["selected"]["n_prototypes"] == 4
    assert (out / "predictions.parquet").is_file()

    # base-to-new: the prototypes exist only for the base classes, so new is n/a, not faked
    out = tmp_path / "runs" / "nearest_mean_b2n"
    proc = _fewclip(["run", *common, "--out", str(out), "--protocol", "base2new"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = json.loads((out / "eval_new" / "metrics.json").read_text())
    assert new["top1"] is None and "unseen" in new["na_reason"]

    # without the plugin the method is unknown, with a clear message
    env.pop("FEWCLIP_PLUGINS")
    proc = _fewclip(["run", *common, "--out", str(tmp_path / "runs" / "none")], env)
    assert proc.returncode != 0 and "unknown method 'nearest_mean'" in proc.stdout + proc.stderr


def test_plugin_method_runs_through_the_snakemake_grid(tmp_path):
    """The same one-file method, named in the config, runs in the Snakemake grid."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    plugin = tmp_path / "nearest_mean.py"
    plugin.write_text(_example())
    cfg = {
        "data_root": str(tmp_path / "data"), "generate_data": "none", "seeds": [1, 2], "device": "cpu",
        "reports": False, "backbones": {"tiny": {"model": "fewclip-tiny-vit", "pretrained": "none"}},
        "protocols": {"fewshot": {"datasets": ["oxford_pets"], "shots": [1, 2],
                                  "runs": [{"backbone": "tiny", "methods": ["nearest_mean"]}]}},
    }
    write_fixture("oxford_pets", tmp_path / "data")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "FEWCLIP_PLUGINS": str(plugin), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(bin_dir / "snakemake"), "--snakefile", str(repo / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(tmp_path / "cfg.yaml"), "--cores", "2",
                           "--config", "batch_cells=True"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "results" / "runs" / "fewshot" / "tiny" / "oxford_pets" / "nearest_mean").glob("*/*/metrics.json"))
    assert len(runs) == 4
    assert all(json.loads(p.read_text())["method"] == "nearest_mean" for p in runs)


def test_readme_shows_the_tested_example():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert _example() in readme, "README's 'Add a method' must show docs/adding-a-method.md's example"
