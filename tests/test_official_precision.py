"""The official precision holds where the workflow runs the cell (issue 24): the workflow sends
feature-level methods to the CPU, and `preset: official` Tip-Adapter-F still trains and is
evaluated in pure fp16 there (half keys, half AdamW state, no GradScaler), as `fewclip plan`
prints it; the clean preset's "auto" stays fp32 on the CPU. The official image methods run their
pure fp16 on a CPU too (`device: cpu`)."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch

from conftest import fewclip
from test_workflow import snakemake, write_config

from fewclip.data.datasets import Item
from fewclip.engine.inputs import CellData, FeatureInputs
from fewclip.engine.run import run_cell
from fewclip.engine.spec import RunSpec
from fewclip.engine.validate import validate_spec
from fewclip.methods import get_method, load_all
from fewclip.paths import run_dir

CPU = torch.device("cpu")
DATASET, SHOTS, SEED, EPOCHS = "oxford_pets", 2, 1, 3
PURE_FP16 = "fp16 (pure: half weights and optimiser state, no autocast, no GradScaler)"


def _config(tmp_path, root, preset):
    return write_config(
        tmp_path / f"{preset}.yaml", root, preset=preset, views=10, seeds=[SEED],
        method_params={"tip_adapter_f": {"epochs": EPOCHS}},
        protocols={"fewshot": {"datasets": [DATASET], "shots": [SHOTS],
                               "runs": [{"backbone": "tiny", "methods": ["tip_adapter_f"]}]}})


def _planned_line(cfg) -> str:
    proc = fewclip("plan", "--configfile", cfg, check=True)
    lines = [line for line in proc.stdout.splitlines() if " tip_adapter_f " in line]
    assert len(lines) == 1, proc.stdout
    return lines[0]


def _run_workflow(tmp_path, root, preset) -> tuple[str, dict, object]:
    """(what `fewclip plan` prints for the cell, its metrics.json, the work folder)."""
    cfg = _config(tmp_path, root, preset)
    work = tmp_path / preset
    rc, out = snakemake("--cores", "1", "--configfile", cfg, "--directory", work, timeout=600)
    assert rc == 0, out[-5000:]
    run = work / run_dir("fewshot", "tiny", DATASET, "tip_adapter_f", SHOTS, SEED)
    return _planned_line(cfg), json.loads((run / "metrics.json").read_text()), work


def _pure_fp16_reference(root, work) -> dict:
    """The same cell on the workflow's stored features and manifest, in pure fp16 by hand: the
    method cast with `to_half()`, half batches, the official loop (AdamW, a cosine per
    iteration, no GradScaler, the best test epoch kept), the second search, half test features."""
    spec = RunSpec(data_root=str(root), dataset=DATASET, method="tip_adapter_f", backbone="fewclip-tiny-vit",
                   out=str(work / "reference"), shots=SHOTS, seed=SEED, pretrained="none", backbone_key="tiny",
                   preset="official", overrides={"epochs": EPOCHS}, features=str(work / "results" / "features"),
                   manifest=str(work / "results" / "splits" / DATASET / "official" / f"{SHOTS}shot_seed{SEED}.json"))
    checked = validate_spec(spec)
    full, hp = checked.full, checked.hp

    def items(split):
        return [Item(p, int(label), full.classnames[int(label)]) for p, label in checked.manifest[split]]

    inputs = FeatureInputs(spec, lambda: None, CPU)  # the store exists: nothing is encoded
    method = checked.cls(hp)
    needs = method.data_needs()
    classes = inputs.classes(full, needs.templates)
    task = inputs.task(method, CellData(full, full, None, items("train"), items("val")), classes, needs)
    method.setup(task)
    method.to_half()
    assert method.keys.dtype == torch.float16 and method.alpha.dtype == torch.float64
    opt = torch.optim.AdamW([method.keys], lr=hp["lr"], eps=hp["eps"], weight_decay=hp["weight_decay"])
    batches = inputs.batches(task, needs, SEED)
    iters = len(list(batches(0)))
    for epoch in range(EPOCHS):
        method.train()
        for it, (x, y) in enumerate(batches(epoch)):
            for g in opt.param_groups:  # CosineAnnealingLR over all iterations, as Tip-Adapter's main.py
                g["lr"] = 0.5 * hp["lr"] * (1 + math.cos(math.pi * (epoch * iters + it) / (EPOCHS * iters)))
            loss = method.loss((x.half(), y), epoch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        method.eval()
        method.epoch_end(task, epoch)
    assert opt.state[method.keys]["exp_avg_sq"].dtype == torch.float16
    selected = method.finish(task)
    test = inputs.test(full)
    half_classes = dataclasses.replace(classes, text_features=classes.text_features.half())
    with torch.no_grad():
        logits = method.logits(test.features.half(), half_classes)
    assert logits.dtype == torch.float16
    top1 = 100.0 * (logits.float().argmax(-1) == test.labels).float().mean().item()
    return {"keys": method.keys.detach().float(), "selected": selected, "top1_after_search": top1,
            **method.report(top1)}


def test_official_tip_adapter_f_runs_pure_fp16_on_the_workflows_cpu_as_planned(tmp_path, fixture_root):
    planned, m, work = _run_workflow(tmp_path, fixture_root, "official")
    # what `fewclip plan` prints is what ran, and metrics.json says so
    assert " preset=official " in planned and " precision=fp16 " in f"{planned} "
    assert m["hparams"]["precision"] == "fp16" and m["provenance"]["device"].startswith("cpu")
    prec = m["train"]["precision"]
    assert prec == {"asked": "fp16", "used": PURE_FP16, "weights": "fp16", "grad_scaler": False}, prec
    run = work / run_dir("fewshot", "tiny", DATASET, "tip_adapter_f", SHOTS, SEED)
    state = torch.load(run / "checkpoint.pt", weights_only=True)["state"]
    assert state["keys"].dtype == torch.float16

    ref = _pure_fp16_reference(fixture_root, work)
    diff = (state["keys"].float() - ref["keys"]).abs().max().item()
    assert diff <= 5e-4, diff
    for key in ("top1", "top1_after_search", "top1_best_epoch"):
        assert m[key] == ref[key], (key, m[key], ref[key])
    for key in ("epoch_kept", "epoch_test_acc", "alpha", "beta", "search_split"):
        assert m["selected"][key] == ref["selected"][key], key


def test_clean_tip_adapter_f_stays_fp32_on_the_workflows_cpu(tmp_path, fixture_root):
    planned, m, _ = _run_workflow(tmp_path, fixture_root, "clean")
    assert re.search(r" precision=auto( |$)", planned), planned
    assert m["hparams"]["precision"] == "auto"
    assert m["train"]["precision"] == {"asked": "auto", "used": "fp32", "weights": "fp32", "grad_scaler": False,
                                       "note": "CPU run: fp32"}


IMAGE_OFFICIAL_FP16 = sorted(n for n, c in load_all().items() if n not in ("maple", "promptsrc")  # deep prompts stay fp32 as official creates them (tests/test_official_deep.py)
                             and c.__module__.startswith("fewclip.methods.")
                             and c.needs == "images" and c.presets.get("official", {}).get("precision") == "fp16")


@pytest.mark.parametrize("name", IMAGE_OFFICIAL_FP16)
def test_official_image_method_trains_and_evaluates_in_pure_half_on_the_cpu(tmp_path, fixture_root, name,
                                                                             one_torch_thread, monkeypatch):
    """`device: cpu` with an image method (the tiny ViT): the official pure fp16 runs as on a GPU,
    training (half learned tensors and optimiser state) and evaluation (half images)."""
    cls = get_method(name)
    seen = []
    original = cls.logits

    def record(self, x, classes):
        seen.append(x.dtype)
        return original(self, x, classes)

    monkeypatch.setattr(cls, "logits", record)
    over = {"epochs": 1, "warmup_epochs": 0, **({"text_warmup_epochs": 0} if "text_warmup_epochs" in cls.hparams
                                                 else {})}
    out = tmp_path / name
    m = run_cell(RunSpec(data_root=str(fixture_root), dataset="dtd", method=name, backbone="fewclip-tiny-vit",
                         out=str(out), shots=1, seed=1, pretrained="none", preset="official", overrides=over,
                         features=str(tmp_path / "features")))
    assert m["hparams"]["precision"] == "fp16" and m["top1"] is not None
    assert m["train"]["precision"] == {"asked": "fp16", "used": PURE_FP16, "weights": "fp16", "grad_scaler": False}
    state = torch.load(out / "checkpoint.pt", weights_only=True)["state"]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    assert seen and set(seen) == {torch.float16}  # training batches and test images alike
