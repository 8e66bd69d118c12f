"""The paper path: what `--configfile config/paper.yaml` plans and runs is what the papers ran.

The expected settings below are written from SPEC §2–§2.4 and the official scripts (CoOp's
COOP.md / configs, CoCoOp's scripts/cocoop/*.sh, Tip-Adapter's configs/*.yaml and main.py,
DPT's trainers and paper text), independently of fewclip's method files, and compared cell by
cell with `fewclip plan --json` — the same dict every run records under `hparams`.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from conftest import REPO, fewclip
from test_workflow import job_stats, snakemake

from fewclip.paths import run_dir

ELEVEN = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
          "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
# Tip-Adapter configs/<dataset>.yaml: init_alpha, search_scale [beta_max, alpha_max]
TIP = {"imagenet": (1.17, 7, 3), "caltech101": (3, 12, 5), "oxford_pets": (1.17, 7, 3),
       "stanford_cars": (3, 20, 10), "oxford_flowers": (10, 50, 50), "food101": (1.17, 10, 10),
       "fgvc_aircraft": (5, 30, 30), "sun397": (1.17, 12, 10), "dtd": (2, 13, 13), "eurosat": (2, 12, 10),
       "ucf101": (3, 7, 3)}
DASSL_SGD = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "warmup_lr": 1e-5,
             "schedule": "cosine_epoch", "crop_scale_min": 0.08}
# the official code trains them in pure fp16
PROMPT_METHODS = ("coop", "cocoop", "vpt", "vlp", "dpt", "kgcoop", "maple", "promptsrc")


def coop_epochs(dataset, shots):  # COOP.md: rn50_ep50 / rn50_ep100 / rn50; ImageNet *_ep50 for all
    return 50 if dataset == "imagenet" else {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}[shots]


def dpt_paper_epochs(dataset, shots):  # DPT paper: 100, 1-shot 60, ImageNet 20
    return 20 if dataset == "imagenet" else (60 if shots == 1 else 100)


def expected(protocol, dataset, method, shots, preset) -> dict:
    """The official setting of one cell (keys as fewclip names them)."""
    imagenet = dataset == "imagenet"
    if method == "zeroshot":
        return {"templates": "dataset"}  # CoOp's ZeroshotCLIP: one CUSTOM_TEMPLATE per dataset
    if method == "linear_probe":
        return {"search_steps": 8}  # lpclip --num_step 8
    if method == "coop":
        # few-shot: CoOp's own table (RN50), and DPT's configs/trainers/CoOp/vit_b32{,_ep50}.yaml (ViT-B/32):
        # the same lr 0.002, batch 32, warm-up 1 epoch at 1e-5, 16 random contexts, CoOp's epochs per K
        if protocol == "fewshot":  # 16 random contexts, class token at the end
            ctx = {"n_ctx": 16, "ctx_init": "", "csc": False, "class_token_position": "end", "init_std": 0.02,
                   "epochs": coop_epochs(dataset, shots)}
        else:  # CoCoOp's scripts: CFG=vit_b16_ctxv1 (ImageNet vit_b16_ep50_ctxv1)
            ctx = {"n_ctx": 4, "ctx_init": "a photo of a", "csc": False, "class_token_position": "end",
                   "epochs": 50 if imagenet else 200}
        return {**ctx, **DASSL_SGD, "lr": 0.002, "batch_size": 32, "warmup_epochs": 1}
    if method == "cocoop":
        if protocol == "fewshot":  # DPT's configs/trainers/VPT/cocoop.yaml (ViT-B/32): 16 random contexts
            return {"n_ctx": 16, "ctx_init": "", "csc": False, "class_token_position": "end",
                    "epochs": 10, "lr": 0.002, "batch_size": 1, "warmup_epochs": 1, **DASSL_SGD}
        # CoCoOp's scripts: vit_b16_c4_ep10_batch1_ctxv1 in base-to-new, cross-dataset and DG
        return {"n_ctx": 4, "ctx_init": "a photo of a", "csc": False, "class_token_position": "end",
                "epochs": 10, "lr": 0.002, "batch_size": 1, "warmup_epochs": 1, **DASSL_SGD}
    if method == "clip_adapter":  # released code: visual adapter, reduction 4, ratio 0.2
        out = {"side": "visual", "reduction": 4, "views": 10, "lr": 0.01, "batch_size": 32,
               "epochs": coop_epochs(dataset, shots) if not imagenet else 50}
        out.update({"ratio": 0.2, "select_ratio": False} if preset == "official" else {"select_ratio": True})
        return out
    if method in ("tip_adapter", "tip_adapter_f"):
        alpha, beta_max, alpha_max = TIP[dataset]
        out = {"init_alpha": float(alpha), "init_beta": 1.0, "beta_max": float(beta_max),
               "alpha_max": float(alpha_max), "views": 10, "search": True,
               # Tip-Adapter datasets/imagenet.py: the 7-template ensemble on ImageNet, in both presets
               "templates": "ensemble7" if imagenet else "dataset"}
        if method == "tip_adapter_f":
            out.update({"optimizer": "adamw", "lr": 0.001, "eps": 1e-4, "batch_size": 256,
                        "schedule": "cosine_iter", "epochs": 100 if dataset == "eurosat" else 20})
        return out
    if method == "vpt":  # DPT's VPT.py + paper: CoOp's epochs, cfg.OPTIM warm-up 10 on every dataset
        return {"n_prompts": 10, "init_std": 0.02, "lr": 0.01, "batch_size": 32, "warmup_epochs": 10,
                "epochs": coop_epochs(dataset, shots), **DASSL_SGD}
    if method in ("vlp", "dpt"):
        epochs = dpt_paper_epochs(dataset, shots)
        if method == "dpt" and dataset in ("caltech101", "oxford_pets") and shots == 16:
            epochs = 60
        out = {"n_prompts": 10, "init_std": 0.02, "n_ctx": 16, "ctx_init": "", "csc": False,
               "class_token_position": "end", "lr": 0.01, "warmup_epochs": 1 if imagenet else 10,
               "text_lr": 0.002, "text_warmup_epochs": 1, "batch_size": 32, "epochs": epochs,
               "guidance_epochs": 10 if imagenet else 30, "guidance_weight": 0.1, **DASSL_SGD}
        if method == "dpt":  # train_single.sh: CPN 10, ALPHA 0.3, BOTTOMLIMIT 12 of 12 layers
            out.update({"cavpt": True, "cavpt_classes": 10, "alpha": 0.3, "cavpt_layers": 1, "cavpt_qk_dim": 32})
        return out
    if method == "kgcoop":
        # htyao89/KgCoOp configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml (CTX_INIT True: the code's
        # hard-coded 'a photo of a', 4 contexts) with the options of base2new_train.sh and xd_train.sh
        # (W 8.0 from run.sh / the script, N_CTX 4, CSC False, end): one config in both, no ImageNet case
        return {"n_ctx": 4, "ctx_init": "a photo of a", "csc": False, "class_token_position": "end",
                "kg_weight": 8.0, "epochs": 100, "lr": 0.002, "batch_size": 128, "warmup_epochs": 1, **DASSL_SGD}
    if method == "clip_lora":
        # MaxZanella/CLIP-LoRA run_utils.py defaults (r 2, alpha 1, dropout_rate 0.25, lr 2e-4, batch 32,
        # n_iters 500) and lora.py (AdamW weight_decay 1e-2 since 37a196d, CosineAnnealingLR over
        # n_iters * shots iterations to eta_min 1e-6, template[0] = 'a photo of a {}.' in every dataset
        # file, fp16 autocast + GradScaler); main.py's RandomResizedCrop scale (0.08, 1)
        return {"rank": 2, "alpha": 1.0, "dropout": 0.25, "lr": 2e-4, "batch_size": 32, "optimizer": "adamw",
                "weight_decay": 1e-2, "eps": 1e-8, "schedule": "cosine_iter", "min_lr": 1e-6, "iters": 500 * shots,
                "epochs": 0, "warmup_epochs": 0, "crop_scale_min": 0.08,
                "template": "a photo of a {}." if preset == "official" else "",
                "precision": "amp" if preset == "official" else "auto"}
    if method == "maple":  # multimodal-prompt-learning configs/trainers/MaPLe/*.yaml + scripts/maple/*.sh
        out = {"n_ctx": 2, "ctx_init": "a photo of a", "init_std": 0.02, "batch_size": 4, "warmup_epochs": 1,
               **DASSL_SGD}
        if protocol == "dg":  # xd_train_maple.sh: vit_b16_c2_ep5_batch4_2ctx_cross_datasets, --load-epoch 2
            return {**out, "prompt_depth": 3, "lr": 0.0026, "epochs": 2}
        return {**out, "prompt_depth": 9, "lr": 0.0035, "epochs": 5}  # vit_b16_c2_ep5_batch4_2ctx, --load-epoch 5
    if method == "promptsrc":  # PromptSRC configs/trainers/PromptSRC/*.yaml + scripts/promptsrc/*.sh
        out = {"n_ctx": 4, "n_ctx_vision": 4, "ctx_init": "a photo of a", "init_std": 0.02, "text_loss_weight": 25.0,
               "image_loss_weight": 10.0, "lr": 0.0025, "batch_size": 4, "warmup_epochs": 1, **DASSL_SGD}
        if protocol == "base2new":  # base2new_train.sh: vit_b16_c2_ep20_batch4_4+4ctx, --load-epoch 20
            return {**out, "epochs": 20, "prompt_depth_text": 9, "prompt_depth_vision": 9, "gpa_mean": 15.0,
                    "gpa_std": 1.0}
        if protocol == "dg":  # reproduce_xd.sh: vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets, --load-epoch 20
            return {**out, "epochs": 20, "prompt_depth_text": 3, "prompt_depth_vision": 3, "gpa_mean": 6.0,
                    "gpa_std": 10.0}
        # few_shot.sh: vit_b16_c2_ep50_batch4_4+4ctx_few_shot; GPA 30/30, the yaml's comment: 45/5 for these five
        late = dataset in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")
        return {**out, "epochs": 50, "prompt_depth_text": 9, "prompt_depth_vision": 9,
                "gpa_mean": 45.0 if late else 30.0, "gpa_std": 5.0 if late else 30.0}
    if method == "lpp":
        # FereshteShakeri/FewShot-CLIP-Strong-Baseline configs/base.yaml (train_epoch 300) and
        # methods/linear_probe_p2.py (α step when (epoch + 1) % 10 == 0, its .grad never zeroed, the
        # latest epoch with val acc >= best, one augmented view per train image, fp16 on the GPU);
        # datasets/imagenet.py: the 7-template ensemble for ImageNet
        return {"epochs": 300, "alpha_every": 10, "alpha_grad": "accumulated", "views": 1, "select": "val",
                "precision": "fp16" if preset == "official" else "fp32",
                "templates": "ensemble7" if imagenet and preset == "official" else "dataset"}
    if method == "gda":
        # mrflogs/ICLR24 configs/{few_shots,base2new,robustness}/*.yaml (augment_epoch 10); main_few_shots.py
        # (α grid, best_alpha 0.1; val = the full val split, ImageNet: the test set), main_base2new.py
        # (pinv of the mean class covariance; k = 64 neighbours, 16 copies of the text weight)
        split = ("test" if imagenet else "full_val") if preset == "official" else "fewshot_val"
        return {"views": 10, "alphas": [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0], "default_alpha": 0.1,
                "search_split": split, "estimator": "pooled" if protocol == "base2new" else "shrinkage",
                "neighbours": 64, "text_copies": 16,
                "templates": "ensemble7" if imagenet and preset == "official" else "dataset"}
    raise AssertionError(f"no expectation for {method}")


def plan_rows(*extra):
    proc = fewclip("plan", "--configfile", REPO / "config" / "paper.yaml", "--json", *extra, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def paper_plans():
    return {"clean": plan_rows(), "official": plan_rows("--config", "preset=official")}


@pytest.mark.parametrize("preset", ["clean", "official"])
def test_paper_plan_matches_spec_cell_by_cell(paper_plans, preset):
    rows = paper_plans[preset]
    # few-shot: 11 datasets × 5 K × 3 seeds × (5 methods on RN50 + 6 on ViT-B-32) = 1815, + zero-shot
    # once per (backbone, dataset): 22 (its result depends on neither K nor the seed); base-to-new
    # 11 × 3 seeds × 6 + 11 zero-shot = 209; DG 6 × 3 + 1 = 19; KgCoOp's scripts on ViT-B-16: few-shot at
    # 4 shots only (xd_train.sh) and base-to-new, 11 × 3 each; CLIP-LoRA few-shot on ViT-B-16, 11 × 5 × 3;
    # MaPLe and PromptSRC base-to-new 2 × 33 and DG 2 × 3, PromptSRC few-shot 11 × 5 × 3
    # LP++ and GDA on RN50 few-shot, 2 × 11 × 5 × 3; GDA base-to-new 11 × 3 and DG 3
    assert len(rows) == 1815 + 22 + 209 + 19 + 2 * 33 + 165 + 2 * 33 + 2 * 3 + 165 + 366 == 2899
    once = [r for r in rows if r["method"] == "zeroshot"]
    assert sorted((r["protocol"], r["backbone"], r["dataset"]) for r in once) == sorted(
        {(r["protocol"], r["backbone"], r["dataset"]) for r in rows if r["method"] == "coop"})
    assert {(r["shots"], r["seed"]) for r in once if r["protocol"] == "fewshot"} == {(1, 1)}  # the first K and seed
    assert {(r["shots"], r["seed"]) for r in once if r["protocol"] != "fewshot"} == {(16, 1)}
    # few-shot backbones: CoOp's and Tip-Adapter's tables on RN50, DPT's table on ViT-B/32
    backbones = {"zeroshot": {"RN50", "ViT-B-32"}, "linear_probe": {"RN50", "ViT-B-32"}, "coop": {"RN50", "ViT-B-32"},
                 "clip_adapter": {"RN50"}, "tip_adapter": {"RN50"}, "tip_adapter_f": {"RN50"},
                 "cocoop": {"ViT-B-32"}, "vpt": {"ViT-B-32"}, "vlp": {"ViT-B-32"}, "dpt": {"ViT-B-32"},
                 "kgcoop": {"ViT-B-16"}, "clip_lora": {"ViT-B-16"}, "promptsrc": {"ViT-B-16"}}
    backbones.update(lpp={"RN50"}, gda={"RN50"})  # LP++'s and GDA's few-shot configs
    wrong = []
    for r in rows:
        assert r["preset"] == preset and r["pretrained"] == "openai"
        assert r["backbone"] == r["model"] and "micro" not in r["backbone"]
        if r["protocol"] == "fewshot":
            assert r["backbone"] in backbones[r["method"]], r
        if r["protocol"] != "fewshot":
            assert r["backbone"] == "ViT-B-16" and r["shots"] == 16
        want = expected(r["protocol"], r["dataset"], r["method"], r["shots"], preset)
        got = r["hparams"]
        diff = {k: (got.get(k, "<missing>"), v) for k, v in want.items() if got.get(k, "<missing>") != v}
        if r["method"] in PROMPT_METHODS:  # SPEC §2.2: the official code trains in pure fp16
            want_prec = "fp16" if preset == "official" else "auto"
            if got.get("precision") != want_prec:
                diff["precision"] = (got.get("precision"), want_prec)
        if r["method"] == "tip_adapter_f" and preset == "official" and got.get("precision") != "fp16":
            diff["precision"] = (got.get("precision"), "fp16")  # fp16 keys -> fp16 adapter and AdamW state
        if diff:
            wrong.append((r["protocol"], r["dataset"], r["method"], r["shots"], diff))
    assert not wrong, f"{len(wrong)} cells differ from SPEC, e.g. {wrong[:5]}"
    kg = [r for r in rows if r["method"] == "kgcoop"]
    assert {(r["protocol"], r["shots"]) for r in kg} == {("fewshot", 4), ("base2new", 16)}  # no DG script
    assert len(kg) == 2 * 11 * 3
    lora = [r for r in rows if r["method"] == "clip_lora"]  # few-shot only, every K, one recipe
    assert {(r["protocol"], r["shots"]) for r in lora} == {("fewshot", k) for k in (1, 2, 4, 8, 16)}
    assert len(lora) == 11 * 5 * 3 and {r["hparams"]["iters"] for r in lora} == {500, 1000, 2000, 4000, 8000}
    deep = {m: {(r["protocol"], r["shots"]) for r in rows if r["method"] == m} for m in ("maple", "promptsrc")}
    assert deep["maple"] == {("base2new", 16), ("dg", 16)}  # MaPLe ships no few-shot config
    assert deep["promptsrc"] == {("base2new", 16), ("dg", 16)} | {("fewshot", k) for k in (1, 2, 4, 8, 16)}
    feature_2024 = {m: [r for r in rows if r["method"] == m] for m in ("lpp", "gda")}  # the 2024 feature-level baselines
    assert {(r["protocol"], r["shots"]) for r in feature_2024["lpp"]} == {("fewshot", k) for k in (1, 2, 4, 8, 16)}
    assert {(r["protocol"], r["backbone"]) for r in feature_2024["gda"]} == {
        ("fewshot", "RN50"), ("base2new", "ViT-B-16"), ("dg", "ViT-B-16")}  # GDA's three main_*.py
    assert [len(feature_2024[m]) for m in ("lpp", "gda")] == [11 * 5 * 3, 11 * 5 * 3 + 11 * 3 + 3]
    assert {(r["protocol"], r["dataset"], r["hparams"]["search_split"]) for r in feature_2024["gda"]
            if r["dataset"] == "imagenet"} == {(p, "imagenet", "test" if preset == "official" else "fewshot_val")
                                               for p in ("fewshot", "base2new", "dg")}
    assert {r["dataset"] for r in rows} == set(ELEVEN)
    assert {(r["protocol"], r["seed"]) for r in rows} >= {(p, s) for p in ("fewshot", "base2new", "dg") for s in (1, 2, 3)}


def test_official_search_grid_and_c_grid_are_the_official_ones():
    from fewclip.methods._tip import SEARCH_STEPS, search_grid
    from fewclip.methods.linear_probe import C_GRID

    assert SEARCH_STEPS == (200, 20)  # Tip-Adapter search_step [200, 20]
    betas, alphas = search_grid(7.0, 3.0)
    assert betas[0] == pytest.approx(0.1) and betas[1] == pytest.approx(0.1 + 6.9 / 200) and len(betas) == 200
    assert alphas[-1] == pytest.approx(0.1 + 19 * 2.9 / 20) and len(alphas) == 20
    assert C_GRID == (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)  # lpclip's initial search


# ----------------------------------------------------------------------------- config: nothing of the demo


def test_paper_config_reads_nothing_of_the_demo():
    from fewclip.plan import check_config, read_config

    demo = read_config([], workdir=REPO)
    paper = check_config(read_config([REPO / "config" / "paper.yaml"], {"data_root": "/data"}))
    assert demo["method_params"] and "micro" in demo["backbones"]  # the demo has its own settings...
    assert paper["method_params"] == {} and set(paper["backbones"]) == {"RN50", "ViT-B-16", "ViT-B-32"}
    assert paper["generate_data"] == "none" and "demo_seed" not in paper
    assert paper["batch_cells"] is False and paper["data_root"] == "/data"
    assert all(bb["pretrained"] == "openai" for bb in paper["backbones"].values())


def _workdir_with_demo_config(tmp_path):
    """A workflow folder where the old Snakefile would have found (and merged) the demo config."""
    work = tmp_path / "work"
    (work / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "config.yaml", work / "config" / "config.yaml")
    return work


def test_paper_run_plans_only_paper_jobs_with_paper_settings(tmp_path, fixture_root, paper_plans):
    work = _workdir_with_demo_config(tmp_path)
    rc, out = snakemake("-n", "-p", "--configfile", REPO / "config" / "paper.yaml", "--config",
                        f"data_root={fixture_root}", "--directory", work, timeout=300)
    assert rc == 0, out[-4000:]
    stats = job_stats(out)
    assert {"generate_data", "pretrain_demo"}.isdisjoint(stats) and not any(r.startswith("fit_batch") for r in stats)
    assert stats["fit"] + stats["fit_gpu"] == len(paper_plans["clean"])
    assert "micro" not in out and "fewclip generate" not in out and "--set" not in out
    # every job carries the planned digest of its cell's hyper-parameters
    digests = {}
    for r in paper_plans["clean"]:
        from fewclip.plan import hparams_digest

        run = run_dir(r["protocol"], r["backbone"], r["dataset"], r["method"], r["shots"], r["seed"])
        digests[run] = hparams_digest(r["hparams"])
    jobs = re.findall(r"fewclip run .*?--expect-hparams (\w+) .*?--out (\S+)", out)
    assert len(jobs) == len(paper_plans["clean"])
    assert all(digests[run.strip("'")] == sha for sha, run in jobs)


def test_demo_is_still_the_default(tmp_path):
    work = _workdir_with_demo_config(tmp_path)
    rc, out = snakemake("-n", "--directory", work, timeout=300)
    assert rc == 0, out[-4000:]
    stats = job_stats(out)
    assert stats["generate_data"] == 1 and stats["pretrain_demo"] == 1
    assert any(r.startswith("fit_batch") for r in stats)


def test_user_config_gets_no_demo_data_generation(tmp_path, fixture_root):
    work = _workdir_with_demo_config(tmp_path)
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"data_root: {fixture_root}\nseeds: [1]\nbackbones:\n  tiny: {{model: fewclip-tiny-vit, "
                   "pretrained: none}\nprotocols:\n  fewshot:\n    datasets: [eurosat]\n    shots: [1]\n    runs:\n"
                   "      - backbone: tiny\n        methods: [zeroshot, coop]\n")
    rc, out = snakemake("-n", "-p", "--configfile", cfg, "--directory", work, timeout=300)
    assert rc == 0, out[-4000:]
    assert "fewclip generate" not in out and "pretrain-demo" not in out and "--set" not in out
    assert job_stats(out)["fit"] == 1 and job_stats(out)["fit_gpu"] == 1


@pytest.mark.parametrize("params,key", [
    ({"coop": {"epoch": 3}}, "no hyper-parameter 'epoch'"),
    ({"coop": {"epochs": "ten"}}, "must be int"),
    ({"koop": {"epochs": 3}}, "method_params.koop"),
    ({"coop": {"lr": -0.1}}, "lr=-0.1"),
    ({"coop": {"csc": True, "ctx_init": "a photo of a"}}, "csc=true with ctx_init"),
    ({"linear_probe": {"fit_on": "l2"}}, "fit_on='l2'"),  # a method outside the grid is checked too
])
def test_method_params_are_checked_before_any_job(tmp_path, fixture_root, params, key):
    import yaml

    cfg = tmp_path / "mine.yaml"
    cfg.write_text(yaml.safe_dump({
        "data_root": str(fixture_root), "seeds": [1], "backbones": {"tiny": {"model": "fewclip-tiny-vit",
                                                                             "pretrained": "none"}},
        "method_params": params,
        "protocols": {"fewshot": {"datasets": ["eurosat"], "shots": [1],
                                  "runs": [{"backbone": "tiny", "methods": ["zeroshot", "coop"]}]}}}))
    proc = fewclip("plan", "--configfile", cfg, cwd=tmp_path)
    assert proc.returncode != 0 and key in proc.stderr and "Traceback" not in proc.stderr
    rc, out = snakemake("-n", "--configfile", cfg, "--directory", tmp_path / "work", timeout=300)
    assert rc != 0 and key in out and "Job stats" not in out


def test_unknown_backbone_model_is_refused_before_any_job(tmp_path, fixture_root):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"data_root: {fixture_root}\nseeds: [1]\nbackbones:\n  b: {{model: ViT-B-61, pretrained: openai}}\n"
                   "protocols:\n  fewshot:\n    datasets: [eurosat]\n    shots: [1]\n    runs:\n"
                   "      - backbone: b\n        methods: [zeroshot]\n")
    proc = fewclip("plan", "--configfile", cfg, cwd=tmp_path)
    assert proc.returncode != 0 and "backbones.b.model" in proc.stderr and "ViT-B-61" in proc.stderr


def test_what_plan_prints_is_what_runs(tmp_path, fixture_root):
    """One cell through `fewclip run` with the plan's digest: metrics.json records the plan's dict;
    a run that would resolve other values (here: another --set) is refused before it starts."""
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"data_root: {fixture_root}\nseeds: [1]\npreset: official\nbackbones:\n  tiny: "
                   "{model: fewclip-tiny-vit, pretrained: none}\nmethod_params:\n  tip_adapter: {views: 2}\n"
                   "protocols:\n  fewshot:\n    datasets: [eurosat]\n    shots: [2]\n    runs:\n"
                   "      - backbone: tiny\n        methods: [tip_adapter]\n")
    proc = fewclip("plan", "--configfile", cfg, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    from fewclip.plan import hparams_digest

    digest = hparams_digest(row["hparams"])
    common = ["run", "--data-root", fixture_root, "--dataset", "eurosat", "--method", "tip_adapter",
              "--backbone", "fewclip-tiny-vit", "--pretrained", "none", "--shots", 2, "--seed", 1,
              "--preset", "official", "--features", tmp_path / "features", "--device", "cpu",
              "--set", "views=2", "--expect-hparams", digest]
    out = tmp_path / "run"
    proc = fewclip(*common, "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hparams"] == row["hparams"]
    other = tmp_path / "other"
    proc = fewclip(*common, "--set", "init_beta=2.0", "--out", other, cwd=tmp_path)
    assert proc.returncode != 0 and "other hyper-parameters than the workflow planned" in proc.stderr
    assert not (other / "metrics.json").exists()


def test_plan_text_output_names_cells_and_settings(paper_plans):
    proc = fewclip("plan", "--configfile", REPO / "config" / "paper.yaml", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(paper_plans["clean"])
    line = next(ln for ln in lines if ln.startswith("base2new ViT-B-16 dtd coop 16shot seed1"))
    assert "n_ctx=4" in line and 'ctx_init="a photo of a"' in line and "epochs=200" in line
