"""docs/adding-a-method.md's two examples, as they stand in the docs: each is one file registered
through FEWCLIP_PLUGINS, and runs through `fewclip run`, `fewclip plan` and the Snakemake grid
without any change to fewclip. The image method declares an image need, typed and ranged
hyper-parameters, a precision hook and a resource need, and the workflow honours each."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO
from fewclip.data.fixtures import write_fixture

DOC = REPO / "docs" / "adding-a-method.md"


def _examples() -> list[str]:
    """The python blocks of docs/adding-a-method.md: the tests run what the docs show."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 2, f"{DOC} must show a feature-level and an image method"
    return blocks


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    feature, image = _examples()[:2]
    (folder / "nearest_mean.py").write_text(feature)
    (folder / "pad_prompt.py").write_text(image)
    return {"nearest_mean": folder / "nearest_mean.py", "pad_prompt": folder / "pad_prompt.py"}


def _env(*plugin_files) -> dict:
    return {**os.environ, "FEWCLIP_PLUGINS": os.pathsep.join(map(str, plugin_files)),
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _fewclip(args, env):
    return subprocess.run([str(BIN / "fewclip"), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=600)


def _common(tmp_path, data, method):
    return ["--data-root", data, "--dataset", "oxford_pets", "--method", method, "--backbone", "fewclip-tiny-vit",
            "--pretrained", "none", "--shots", "2", "--seed", "1", "--features", tmp_path / "features",
            "--device", "cpu"]


def test_feature_plugin_runs_through_fewclip_run(tmp_path, plugins):
    data = tmp_path / "data"
    write_fixture("oxford_pets", data, n_classes=4, n_train=3, n_val=2, n_test=3)
    env = _env(plugins["nearest_mean"])
    common = _common(tmp_path, data, "nearest_mean")

    out = tmp_path / "runs" / "nearest_mean"
    proc = _fewclip(["run", *common, "--out", out, "--set", "scale=50"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "nearest_mean" and m["status"] == "complete"
    assert m["top1"] is not None and m["n_test"] == 4 * 3 and m["n_classes"] == 4
    assert m["hparams"]["scale"] == 50.0 and m["selected"]["n_prototypes"] == 4
    assert (out / "predictions.parquet").is_file()

    # base-to-new: the prototypes exist only for the base classes, so new is n/a, not faked
    out = tmp_path / "runs" / "nearest_mean_b2n"
    proc = _fewclip(["run", *common, "--out", out, "--protocol", "base2new"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = json.loads((out / "eval_new" / "metrics.json").read_text())
    assert new["top1"] is None and "unseen" in new["na_reason"]

    # its declared range: a scale of 0 is refused before any work
    out = tmp_path / "runs" / "zero"
    proc = _fewclip(["run", *common, "--out", out, "--set", "scale=0"], env)
    assert proc.returncode != 0 and "scale=0.0 (must be greater than 0)" in proc.stderr
    assert not out.exists()

    # without the plugin the method is unknown, with a clear message
    env.pop("FEWCLIP_PLUGINS")
    proc = _fewclip(["run", *common, "--out", tmp_path / "runs" / "none"], env)
    assert proc.returncode != 0 and "unknown method 'nearest_mean'" in proc.stdout + proc.stderr


def test_image_plugin_trains_through_the_encoder(tmp_path, plugins):
    """`fewclip run` gives it images (its crop range), trains it, checkpoints only what it learns,
    and refuses bad values of its declared types and ranges before any work."""
    data = tmp_path / "data"
    write_fixture("oxford_pets", data, n_classes=4, n_train=3, n_val=2, n_test=3)
    env = _env(plugins["pad_prompt"])
    common = _common(tmp_path, data, "pad_prompt")

    out = tmp_path / "runs" / "pad"
    proc = _fewclip(["run", *common, "--out", out, "--set", "pad=2"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "pad_prompt" and m["top1"] is not None and m["epochs"] == 2
    assert m["train"]["steps"] == 2  # 4 classes × 2 shots = one batch of 8, two epochs
    assert m["trainable_params"] == 3 * 32 * 32  # the tiny ViT's 32-pixel image: the prompt only
    assert m["selected"]["prompt_pixels"] == 3 * (32 * 32 - 28 * 28)
    assert m["hparams"]["crop_scale_min"] == 0.5 and m["hparams"]["pad"] == 2
    import torch

    state = torch.load(out / "checkpoint.pt", weights_only=True)["state"]
    assert set(state) == {"mask", "prompt"}  # the frozen encoder is not in the checkpoint

    bad = tmp_path / "runs" / "bad"
    for args, said in [(["--set", "pad=0", "--set", "scale=-1"], ["pad=0 (must be at least 1)",
                                                                    "scale=-1.0 (must be greater than 0)"]),
                       (["--set", "pad=2.5"], ["'pad' of method pad_prompt must be int"]),
                       (["--set", "crop_scale_min=1.5"], ["crop_scale_min=1.5 (must be between 0 and 1)"]),
                       (["--set", "optimizer=adam"], ["optimizer='adam' (valid: sgd, adamw)"])]:
        proc = _fewclip(["run", *common, "--out", bad, *args], env)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        for words in said:
            assert words in proc.stderr, (words, proc.stderr[-1000:])
        assert not bad.exists()


PRECISION_CHECK = """
import torch
from fewclip.engine.inputs import ImageTask
from fewclip.methods import ClassSet, get_method, resolve_hparams
from fewclip.models.backbone import load_backbone

cls = get_method("pad_prompt")
hp = resolve_hparams(cls, "oxford_pets", 2, "official")
assert hp["precision"] == "fp16", hp
bb = load_backbone("fewclip-tiny-vit", "none", "cpu")
classes = ClassSet(["a", "b"], torch.nn.functional.normalize(torch.randn(2, bb.embed_dim), dim=-1))
method = cls(hp)
method.setup(ImageTask(bb, classes, None, None, "oxford_pets", 2, 1, "official", hp, torch.device("cpu"), None))
method.to_half()
assert method.is_half and method.prompt.dtype == torch.float16 and method.mask.dtype == torch.float16
assert next(method.encoder[0].parameters()).dtype == torch.float16
assert next(bb.model.parameters()).dtype == torch.float32  # the process's shared backbone is untouched
images = torch.randn(3, 3, bb.image_size, bb.image_size).half()
with torch.no_grad():
    assert method.logits(images, classes).dtype == torch.float16
print("ok")
"""


def test_image_plugin_precision_hook(plugins):
    """The official preset's pure fp16 goes through the plugin's own `to_half`."""
    proc = subprocess.run([sys.executable, "-c", PRECISION_CHECK], env=_env(plugins["pad_prompt"]),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_plugins_run_through_plan_and_the_snakemake_grid(tmp_path, plugins):
    """Both one-file methods, named in a config, are planned and run by the grid: the image method
    in rule fit_gpu with its declared memory, the feature method in rule fit; a bad value in
    method_params stops the workflow before any job."""
    cfg = {
        "data_root": str(tmp_path / "data"), "generate_data": "none", "seeds": [1, 2], "device": "cpu",
        "reports": False, "backbones": {"tiny": {"model": "fewclip-tiny-vit", "pretrained": "none"}},
        "method_params": {"pad_prompt": {"epochs": 1}},
        "protocols": {"fewshot": {"datasets": ["oxford_pets"], "shots": [1],
                                  "runs": [{"backbone": "tiny", "methods": ["nearest_mean", "pad_prompt"]}]}},
    }
    write_fixture("oxford_pets", tmp_path / "data")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = _env(plugins["nearest_mean"], plugins["pad_prompt"])

    plan = _fewclip(["plan", "--configfile", tmp_path / "cfg.yaml", "--json"], env)
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = [json.loads(line) for line in plan.stdout.splitlines() if line.strip()]
    assert {p["method"] for p in planned} == {"nearest_mean", "pad_prompt"} and len(planned) == 4
    assert all(p["hparams"]["epochs"] == 1 for p in planned if p["method"] == "pad_prompt")

    def snakemake(configfile):
        return subprocess.run([str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory",
                               str(tmp_path), "--configfile", str(configfile), "--cores", "2"],
                              env=env, capture_output=True, text=True, timeout=900)

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**cfg, "method_params": {"pad_prompt": {"pad": 0}}}))
    proc = snakemake(tmp_path / "bad.yaml")
    assert proc.returncode != 0 and "pad=0 (must be at least 1)" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()

    proc = snakemake(tmp_path / "cfg.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    jobs = re.findall(r"rule (\w+):\n(?:.*\n)*?\s+wildcards: ([^\n]*)\n\s+resources: ([^\n]*)", log)
    fits = {(rule, re.search(r"method=(\w+)", wc).group(1)): res for rule, wc, res in jobs if "method=" in wc}
    assert {m for (rule, m) in fits if rule == "fit_gpu"} == {"pad_prompt"}
    assert {m for (rule, m) in fits if rule == "fit"} == {"nearest_mean"}
    assert "mem_mb=8000" in fits[("fit_gpu", "pad_prompt")]  # the plugin's declared memory
    runs = sorted((tmp_path / "results" / "runs" / "fewshot" / "tiny" / "oxford_pets").glob("*/*/*/metrics.json"))
    assert len(runs) == 4
    assert {json.loads(p.read_text())["method"] for p in runs} == {"nearest_mean", "pad_prompt"}


def test_readme_shows_the_tested_example():
    readme = (REPO / "README.md").read_text()
    assert _examples()[0] in readme, "README's 'Add a method' must show docs/adding-a-method.md's first example"
