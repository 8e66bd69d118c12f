"""Every method on the modern open_clip families (issue 28), on tiny random models that keep each
family's flags (fewclip.models.families): LAION (GELU), MetaCLIP (QuickGELU), EVA02 (timm EVA
tower), SigLIP (timm tower, logit bias, bidirectional text tower pooled at its last position, an
HF tokenizer with no start token). Each family's own logit scale and bias, tokenizer, pooling and
preprocessing hold in fewclip's zero-shot and prompt learners; methods that hook into the image
tower's token sequence are refused on timm towers before any job."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import BIN, REPO, refused

from fewclip.errors import ConfigError
from fewclip.methods import ClassSet, load_all
from fewclip.models.backbone import load_backbone

FAMILIES = ["fewclip-tiny-laion", "fewclip-tiny-metaclip", "fewclip-tiny-eva", "fewclip-tiny-siglip"]
TIMM_TOWER = {"fewclip-tiny-eva", "fewclip-tiny-siglip"}
REGISTRY = load_all()
BUILTIN = sorted(n for n, c in REGISTRY.items() if c.__module__.startswith("fewclip.methods."))
TOKEN_HOOKS = {"vpt", "vlp", "dpt", "maple", "promptsrc", "clip_lora"}  # need open_clip's VisionTransformer


@pytest.fixture(scope="module")
def backbones():
    return {name: load_backbone(name, "none") for name in FAMILIES}


def test_clip_logits_use_the_backbones_own_scale_and_bias():
    text = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    f = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    cs = ClassSet(["a", "b", "c"], text, logit_scale=12.5, logit_bias=-10.0)
    torch.testing.assert_close(cs.clip_logits(f), 12.5 * f @ text.t() - 10.0)
    assert cs.subset([2, 0]).logit_bias == -10.0 and cs.subset([2, 0]).logit_scale == 12.5
    # an official recipe's hard-coded 100 holds only under `official` on OpenAI's weights
    assert cs.fixed_scale("official") == 12.5 and cs.fixed_scale("clean") == 12.5
    openai = ClassSet(["a"], text[:1], logit_scale=100.00047, openai_weights=True)
    assert openai.fixed_scale("official") == 100.0 and openai.fixed_scale("clean") == 100.00047


def test_each_family_reports_its_own_logit_scale_and_bias(backbones):
    for name, bb in backbones.items():
        assert bb.logit_scale == pytest.approx(float(bb.model.logit_scale.detach().exp()))
        if name == "fewclip-tiny-siglip":
            assert bb.logit_bias == pytest.approx(-10.0)  # SigLIP's init_logit_bias
        else:
            assert bb.logit_bias == 0.0
        assert not bb.openai_weights


@pytest.mark.parametrize("name", FAMILIES)
def test_zero_shot_equals_the_models_own_pipeline(name, backbones, fixture_root, cli, tmp_path):
    """fewclip's zero-shot run (its feature store, preprocessing, tokenizer, scale and bias) scores
    the classes as open_clip's own pipeline does: the model's preprocess transform, its tokenizer
    and `model(image, text)` with the scale (and bias) it returns, up to the store's fp16."""
    from open_clip.transform import PreprocessCfg, image_transform_v2
    import open_clip
    from fewclip.data.datasets import load_dataset
    from fewclip.data.images import load_image
    from fewclip.engine.features import FeatureStore
    from fewclip.models.templates import prompt_texts

    out = tmp_path / "run"
    cli("run", "--method", "zeroshot", "--dataset", "eurosat", "--data-root", fixture_root, "--backbone", name,
        "--pretrained", "none", "--shots", 1, "--seed", 1, "--out", out, "--features", tmp_path / "features",
        check=True)
    pred = pd.read_parquet(out / "predictions.parquet")
    bb = backbones[name]
    ds = load_dataset("eurosat", fixture_root)
    store = FeatureStore(tmp_path / "features" / name / "eurosat", ds, lambda: pytest.fail("re-encoded"),
                         model=name, pretrained="none")
    test, head = store.test(), store.logit_head()  # what the run stored (nothing is recomputed)
    ours = ClassSet(ds.classnames, store.text("dataset"), logit_scale=head["scale"],
                    logit_bias=head["bias"]).clip_logits(test.features.float())
    assert test.paths == pred["path"].tolist() and ours.argmax(1).tolist() == pred["pred"].tolist()

    cfg = PreprocessCfg(**{k: v for k, v in bb.model.visual.preprocess_cfg.items() if k in PreprocessCfg.__annotations__})
    transform = image_transform_v2(cfg, is_train=False)
    # decoded as fewclip decodes (the fixture holds palette, CMYK, 16-bit and alpha files on purpose)
    images = torch.stack([transform(load_image(Path(fixture_root) / p)) for p in test.paths])
    texts = [prompt_texts(c, "dataset", ds.template)[0] for c in ds.classnames]
    with torch.no_grad():
        result = bb.model(images, open_clip.get_tokenizer(name)(texts))
    f_img, f_txt, scale = result[:3]
    want = scale * torch.nn.functional.normalize(f_img, dim=-1) @ torch.nn.functional.normalize(f_txt, dim=-1).t()
    if len(result) > 3:
        want = want + result[3]
    assert (len(result) > 3) == (name == "fewclip-tiny-siglip") and head["bias"] == pytest.approx(float(result[-1].detach()) if len(result) > 3 else 0.0)
    assert head["scale"] == pytest.approx(float(scale))
    torch.testing.assert_close(ours, want, atol=4e-3 * float(scale), rtol=0)  # fp16 features: ~1e-3 of |f|·|t|


@pytest.mark.parametrize("name", FAMILIES)
def test_prompt_learner_inserts_and_pools_where_the_model_does(name, backbones):
    """With its context set to the embeddings of the placeholder words themselves, a CoOp prompt
    must give exactly the model's own text feature of the placeholder prompt: the context sits
    where the tokenizer puts the text (after CLIP's start token; first for SigLIP's), and the
    feature is read where the model pools. The waste-free encoder runs only on causal towers
    pooled at the end-of-text token; SigLIP's bidirectional tower runs the whole sequence."""
    from fewclip.models.prompts import TextPrompts, encode_prompts
    from fewclip.models.text_encoder import fast_path_supported
    from fewclip.models.towers import prefix_len

    bb = backbones[name]
    names = ["annual crop", "forest", "sea lake"]
    prompts = TextPrompts(bb.model, bb.tokenizer, n_ctx=4)
    P = prefix_len(bb.tokenizer)
    assert P == (0 if name == "fewclip-tiny-siglip" else 1)
    placeholder = bb.tokenizer(["X X X X"]).long()
    with torch.no_grad():
        prompts.ctx.copy_(bb.text_tower.token_embedding(placeholder)[0, P : P + 4])
        got = encode_prompts(prompts, prompts.bank(names))
        want = bb.encode_text([f"X X X X {n}." for n in names])
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert fast_path_supported(bb.text_tower) == (name != "fewclip-tiny-siglip")


def test_methods_that_hook_the_image_tokens_are_refused_on_timm_towers_before_any_work(cli, fixture_root, tmp_path):
    for name in sorted(TIMM_TOWER):
        for method in sorted(TOKEN_HOOKS):
            out = tmp_path / f"{name}-{method}"
            proc = cli("run", "--method", method, "--dataset", "eurosat", "--data-root", fixture_root,
                       "--backbone", name, "--pretrained", "none", "--shots", 1, "--seed", 1, "--out", out,
                       "--features", tmp_path / "features")
            line = refused(proc, method, name, "timm")
            assert "VisionTransformer" in line
            assert not out.exists() or not any(out.iterdir())
    assert not (tmp_path / "features").exists()  # nothing encoded either
    for name in FAMILIES:  # the other methods have no such requirement
        for method in BUILTIN:
            problem = REGISTRY[method].tower_problem(name)
            assert (problem is not None) == (method in TOKEN_HOOKS and name in TIMM_TOWER), (name, method)


def test_plan_refuses_an_inapplicable_cell_and_lists_the_backbones_grid():
    from fewclip.plan import check_config, plan, read_config

    cfg = read_config([REPO / "config" / "backbones.yaml"], {"data_root": "/nonexistent"})
    cells = plan(check_config(cfg))
    runs = {(c.cell.backbone, c.cell.method) for c in cells}
    keys = set(cfg["backbones"])
    assert {b for b, _ in runs} == keys
    for bk, bb in cfg["backbones"].items():
        has_lora = (bk, "clip_lora") in runs
        assert has_lora == (bb["model"] in ("ViT-B-16",)), bk  # timm towers (EVA02, SigLIP) run no LoRA
        assert {(bk, m) for m in ("zeroshot", "coop", "cocoop", "tip_adapter", "lpp", "gda")} <= runs
    # 11 datasets x 3 K x 3 seeds per trained cell; zero-shot once per (backbone, dataset)
    per_backbone = pd.Series([c.cell.backbone for c in cells]).value_counts()
    assert per_backbone["openai"] == 11 * (1 + 9 * 9) and per_backbone["siglip"] == 11 * (1 + 8 * 9)
    bad = yaml.safe_load((REPO / "config" / "backbones.yaml").read_text())
    bad["protocols"]["fewshot"]["runs"].append({"backbone": "siglip", "methods": ["vpt"]})
    with pytest.raises(ConfigError, match=r"backbone siglip, method vpt.*timm"):
        plan(check_config(bad | {"data_root": "/nonexistent"}))


def test_every_applicable_method_runs_on_every_family_in_the_workflow(tmp_path, fixture_root):
    """The workflow on the four tiny families: every method that applies runs (its own scale, bias,
    tokenizer, pooling and preprocessing), and the report puts the backbones side by side."""
    trained = [m for m in BUILTIN if REGISTRY[m].trains]
    keys = {name.removeprefix("fewclip-tiny-"): name for name in FAMILIES}
    runs = [{"backbone": k, "methods": [m for m in BUILTIN if REGISTRY[m].tower_problem(name) is None]}
            for k, name in keys.items()]
    cfg = tmp_path / "cfg.yaml"
    work = tmp_path / "work"
    work.mkdir()
    cfg.write_text(yaml.safe_dump({
        "data_root": str(fixture_root), "generate_data": "none", "seeds": [1], "device": "cpu", "views": 10,
        "templates": ["dataset"], "reports": True, "batch_cells": True, "baselines": ["zeroshot"],
        "backbones": {k: {"model": name, "pretrained": "none"} for k, name in keys.items()},
        "method_params": {m: {"epochs": 1} for m in trained if m != "clip_lora"}
        | {"cocoop": {"epochs": 1, "batch_size": 4}, "vlp": {"epochs": 1, "guidance_epochs": 1},
           "dpt": {"epochs": 1, "guidance_epochs": 1}, "clip_lora": {"iters": 2}},
        "protocols": {"fewshot": {"datasets": ["eurosat"], "shots": [1], "runs": runs}},
    }))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["timeout", "-k", "10", "900", str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(work), "--configfile", str(cfg), "--cores", "2", "--quiet"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for run in runs:
        for m in run["methods"]:
            metrics = json.loads((work / f"results/runs/fewshot/{run['backbone']}/eurosat/{m}/1shot/seed1/metrics.json")
                                 .read_text())
            assert metrics["status"] == "complete" and metrics["top1"] is not None, (run["backbone"], m)
    assert len(runs[0]["methods"]) == len(BUILTIN) and len(runs[-1]["methods"]) == len(BUILTIN) - len(TOKEN_HOOKS)
    summary = (work / "reports" / "tables" / "backbones_1shot.md").read_text()
    for k in keys:
        assert f"| {k} " in summary
    assert "Backbones side by side" in (work / "reports" / "README.md").read_text()
