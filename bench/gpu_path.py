"""GPU path (issue 9.5): encoding throughput at bf16 vs the GPU's measured matrix rate, CoOp and
CoCoOp step times at ImageNet scale, and an extrapolated wall time of the paper grid.

    python bench/gpu_path.py                    # on a GPU: ViT-B-16 + RN50, 1000 classes, batch 32
    python bench/gpu_path.py --device cpu       # CI-sized: tiny models, few classes (runs anywhere)

Weights are random (`--pretrained none`): throughput and step time do not depend on the values.
Prints a table and writes --json. Images are preprocessed once and cached as a pinned uint8
tensor; a background thread copies the next batch while the GPU works (non_blocking), and the
model runs channels-last under bf16 autocast.

Issue 19: the CoOp and CoCoOp steps are timed with the text encoder as it runs now (each prompt
only up to its EOT, the shared [SOS, context] prefix once per image, SDPA, recomputation only when
the activations do not fit the free memory) and as before (every prompt padded, open_clip's
transformer), and the grid is extrapolated from both. The one prepared call on a GPU machine:

    python bench/gpu_path.py --json bench/results_gpu_path_gpu.json && \
    python bench/text_encoder.py --device cuda --model ViT-B-16 --steps 5 --json bench/results_text_encoder_gpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import threading
import time
from pathlib import Path

import torch

# Split sizes (classes, few-shot train images at 16 shots, test images) of the 11 datasets,
# from the CoOp paper's dataset table; used only to extrapolate the grid's wall time.
DATASETS = {
    "imagenet": (1000, 50000), "caltech101": (100, 2465), "oxford_pets": (37, 3669),
    "stanford_cars": (196, 8041), "oxford_flowers": (102, 2463), "food101": (101, 30300),
    "fgvc_aircraft": (100, 3333), "sun397": (397, 19850), "dtd": (47, 1692), "eurosat": (10, 8100),
    "ucf101": (101, 3783),
}
DG_TEST = {"imagenet_v2": 10000, "imagenet_sketch": 50889, "imagenet_a": 7500, "imagenet_r": 30000}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device, dtype) -> float:
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


class GpuUtil:
    """Samples GPU utilisation (NVML) in a thread while a block runs."""

    def __init__(self, device):
        self.samples, self.handle = [], None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nvml = pynvml
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            except Exception as err:  # no NVML: report utilisation as unknown, say why
                self.error = str(err)

    def __enter__(self):
        self.stop = threading.Event()
        if self.handle is not None:
            def loop():
                while not self.stop.is_set():
                    self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
                    time.sleep(0.05)
            self.thread = threading.Thread(target=loop, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.handle is not None:
            self.thread.join()

    @property
    def mean(self):
        return sum(self.samples) / len(self.samples) if self.samples else None


def flops_per_image(model, size, device, dtype):
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), \
            torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
        model.encode_image(x)
    return counter.get_total_flops()


def encode_throughput(name, device, batch, n_images, dtype):
    from fewclip.models.backbone import load_backbone

    bb = load_backbone(name, "none", device)
    model = bb.model.to(memory_format=torch.channels_last)
    size = bb.image_size
    # the cache: preprocessed images as uint8, pinned; normalisation happens on the device
    cache = torch.randint(0, 255, (n_images, 3, size, size), dtype=torch.uint8)
    if device.type == "cuda":
        cache = cache.pin_memory()
    mean = torch.tensor([0.481, 0.458, 0.408], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.269, 0.261, 0.276], device=device).view(1, 3, 1, 1) * 255
    flops = flops_per_image(model, size, device, dtype)

    def run(n_batches):
        stream = torch.cuda.Stream() if device.type == "cuda" else None
        nxt = cache[:batch].to(device, non_blocking=True)
        for i in range(n_batches):
            cur = nxt
            j = ((i + 1) * batch) % (n_images - batch + 1)
            if stream is not None:
                with torch.cuda.stream(stream):
                    nxt = cache[j : j + batch].to(device, non_blocking=True)
            else:
                nxt = cache[j : j + batch]
            x = ((cur.float() - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
                model.encode_image(x)
            if stream is not None:
                torch.cuda.current_stream().wait_stream(stream)

    run(3)
    sync(device)
    n_batches = max(1, n_images // batch) * (3 if device.type == "cuda" else 1)
    with GpuUtil(device) as util:
        t = time.perf_counter()
        run(n_batches)
        sync(device)
        seconds = time.perf_counter() - t
    return {"model": name, "image_size": size, "images_per_s": n_batches * batch / seconds,
            "gflops_per_image": flops / 1e9, "gpu_util_pct": util.mean}


def step_time(method_name, model_name, n_classes, batch, device, steps, fast=True):
    """Seconds per optimisation step of a prompt method (forward + backward + SGD) through the engine.
    fast=False: the text encoder before issue 19 (every prompt padded, open_clip's transformer)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from fewclip.engine.inputs import ImageTask
    from fewclip.engine.train import TrainConfig, train
    from fewclip.methods import ClassSet, get_method, resolve_hparams
    from fewclip.models import prompts
    from fewclip.models.backbone import load_backbone

    prompts.FAST_TEXT = fast

    bb = load_backbone(model_name, "none", device)
    names = list(IMAGENET_CLASSNAMES[:n_classes])
    text = torch.nn.functional.normalize(torch.randn(n_classes, bb.embed_dim, device=device), dim=-1)
    classes = ClassSet(names, text, torch.arange(n_classes, device=device))
    cls = get_method(method_name)
    # ImageNet-scale runs: CoOp's few-shot table; CoCoOp's (its DG/cross-dataset source model)
    hp = resolve_hparams(cls, "imagenet", 16, "clean", {"batch_size": batch},
                         "dg" if method_name == "cocoop" else "fewshot")
    method = cls(hp)
    method.setup(ImageTask(bb, classes, None, None, "imagenet", 16, 1, "clean", hp, device, None))
    method.to(device)
    images = torch.randn(batch, 3, bb.image_size, bb.image_size, device=device).contiguous(
        memory_format=torch.channels_last)
    labels = torch.randint(n_classes, (batch,), device=device)
    cfg = TrainConfig(epochs=1, lr=hp["lr"], schedule="constant", warmup_epochs=0)

    def batches(n):
        return lambda epoch: ((images, labels) for _ in range(n))

    train(method, batches(2), cfg, device, desc="warm-up")
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with GpuUtil(device) as util:
        t = time.perf_counter()
        train(method, batches(steps), cfg, device, desc=method_name)
        sync(device)
        seconds = (time.perf_counter() - t) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    prompts.FAST_TEXT = True
    return {"method": method_name, "model": model_name, "classes": n_classes, "batch": batch,
            "text_path": "shared prefix" if fast else "padded", "seconds_per_step": seconds, "peak_gib": peak,
            "gpu_util_pct": util.mean}


def extrapolate(enc: dict, steps: dict, cfg_path: Path) -> dict:
    """Hours of the paper grid on one such GPU: encoding every store once + every image-method
    cell's optimisation steps (epochs × ceil(K·C / 32)); text cost scaled linearly with classes."""
    import yaml

    from fewclip.grid import expand_grid
    from fewclip.grid import image_methods as registered_image_methods
    from fewclip.methods import get_method, resolve_hparams

    config = yaml.safe_load(cfg_path.read_text())
    image_methods = registered_image_methods()  # needs = "images": the cells of the workflow's fit_gpu
    train_s, by_method = 0.0, {}
    for c in expand_grid(config):
        if c.method not in image_methods or c.dataset not in DATASETS:
            continue
        n_cls, _ = DATASETS[c.dataset]
        if c.protocol == "base2new":
            n_cls = math.ceil(n_cls / 2)
        hp = resolve_hparams(get_method(c.method), c.dataset, c.shots, config.get("preset", "clean"), None,
                             c.protocol)
        batch = int(hp.get("batch_size", 32))
        ref = steps["cocoop"] if c.method == "cocoop" else steps["coop"]
        per_step = ref["seconds_per_step"] * (0.5 + 0.5 * n_cls / ref["classes"]) * batch / ref["batch"]
        seconds = int(hp["epochs"]) * math.ceil(c.shots * n_cls / batch) * per_step
        train_s += seconds
        by_method[c.method] = by_method.get(c.method, 0.0) + seconds / 3600
    rate = min(e["images_per_s"] for e in enc.values())
    test_images = sum(n for _, n in DATASETS.values()) + sum(DG_TEST.values())
    n_backbones = len(config["backbones"])
    encode_s = n_backbones * test_images / rate
    return {"train_hours": train_s / 3600, "encode_hours": encode_s / 3600,
            "total_hours": (train_s + encode_s) / 3600, "train_hours_by_method": by_method}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16 if gpu else torch.float32
    models = ["ViT-B-16", "RN50"] if gpu else ["fewclip-tiny-vit", "fewclip-tiny-rn"]
    n_classes, batch = (1000, 32) if gpu else (20, 8)

    import importlib.metadata as md

    info = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if gpu else f"cpu {platform.processor() or platform.machine()}",
            "torch": torch.__version__, "open_clip": md.version("open_clip_torch"), "python": platform.python_version()}
    peak = matmul_tflops(device, dtype)
    enc = {m: encode_throughput(m, device, 256 if gpu else 16, 4096 if gpu else 64, dtype) for m in models}
    for e in enc.values():
        e["fraction_of_matmul_peak"] = e["images_per_s"] * e["gflops_per_image"] * 1e9 / (peak * 1e12)
    coop_model = "RN50" if gpu else "fewclip-tiny-rn"
    cocoop_model = "ViT-B-16" if gpu else "fewclip-tiny-vit"
    # issue 19: each prompt only up to its EOT and the shared prefix once ("after", what runs) against
    # the padded text encoder before it ("before"); the grid is extrapolated from both
    steps = {"coop": step_time("coop", coop_model, n_classes, batch, device, 20 if gpu else 2),
             "cocoop": step_time("cocoop", cocoop_model, n_classes, batch, device, 10 if gpu else 2)}
    before = {"coop": step_time("coop", coop_model, n_classes, batch, device, 20 if gpu else 2, fast=False),
              "cocoop": step_time("cocoop", cocoop_model, n_classes, batch, device, 10 if gpu else 2, fast=False)}
    paper = Path(__file__).resolve().parents[1] / "config" / "paper.yaml"
    grid = extrapolate(enc, steps, paper)
    grid_before = extrapolate(enc, before, paper)
    result = {**info, "matmul_tflops": peak, "matmul_dtype": str(dtype), "encode": enc, "steps": steps,
              "steps_before": before, "paper_grid": grid, "paper_grid_before": grid_before}

    print(f"device: {info['device']}  torch {info['torch']}  open_clip {info['open_clip']}  {info['date']}")
    print(f"measured {str(dtype).split('.')[-1]} matmul rate: {peak:.3g} TFLOP/s")
    print(f"{'model':18s} {'img/s':>9s} {'GFLOP/img':>10s} {'% of matmul':>12s} {'GPU util %':>11s}")
    for e in enc.values():
        util = "n/a" if e["gpu_util_pct"] is None else f"{e['gpu_util_pct']:.0f}"
        print(f"{e['model']:18s} {e['images_per_s']:9.0f} {e['gflops_per_image']:10.2f} "
              f"{100 * e['fraction_of_matmul_peak']:11.1f}% {util:>11s}")
    print(f"{'step':8s} {'model':18s} {'classes':>7s} {'batch':>5s} {'text path':>14s} {'ms/step':>8s} {'peak GiB':>9s}")
    for s in [*before.values(), *steps.values()]:
        pk = "n/a" if s["peak_gib"] is None else f"{s['peak_gib']:.1f}"
        print(f"{s['method']:8s} {s['model']:18s} {s['classes']:7d} {s['batch']:5d} {s['text_path']:>14s} "
              f"{1000 * s['seconds_per_step']:8.1f} {pk:>9s}")
    for label, g in (("before issue 19 (padded text encoder)", grid_before), ("now (shared prefix)", grid)):
        print(f"paper grid on one such device, {label} (extrapolated): train {g['train_hours']:.1f} h + "
              f"encode {g['encode_hours']:.2f} h = {g['total_hours']:.1f} h")
        print("  by method (h): " + ", ".join(f"{m} {h:.1f}" for m, h in sorted(g["train_hours_by_method"].items())))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
