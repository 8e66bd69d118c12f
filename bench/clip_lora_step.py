"""CLIP-LoRA's training step against CoOp's: seconds per step and peak memory, one script.

    python bench/clip_lora_step.py                       # tiny ViT, 10 classes, batch 32, CPU (fp32)
    python bench/clip_lora_step.py --classes 100 --json out.json
    python bench/clip_lora_step.py --device cuda --model ViT-B-16 --classes 1000 --preset official

Each method runs in its own child process (so that its peak memory is its own), set up as the
engine sets it up (few-shot settings of the chosen preset, random init: `--pretrained none`), and
takes --steps optimisation steps on one random batch: the forward, the backward and its own optimiser
(CLIP-LoRA: AdamW on the LoRA tensors of both towers; CoOp: SGD on the text context), under the
precision its preset resolves to on the device (autocast and GradScaler as the engine's loop). It
reports the best and the median step time after one warm-up step, the bytes the autograd graph saves
for the backward (the activations; exact), the peak memory (GPU: torch.cuda.max_memory_allocated;
CPU: the growth of the process's peak RSS over the steps) and the trainable parameters. CLIP-LoRA
back-propagates through both encoders (text re-encoded for every class at every step); CoOp only
through the text encoder (the image encoder runs without a graph).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

METHODS = ("clip_lora", "coop")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one(name: str, args) -> dict:
    """One method's numbers, in this process."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from fewclip.engine.inputs import ImageTask
    from fewclip.engine.run import train_config
    from fewclip.engine.train import resolve_precision
    from fewclip.methods import ClassSet, get_method, resolve_hparams
    from fewclip.models.backbone import load_backbone

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bb = load_backbone(args.model, args.pretrained, device)
    names = list(IMAGENET_CLASSNAMES[: args.classes])
    text = torch.nn.functional.normalize(torch.randn(args.classes, bb.embed_dim, device=device), dim=-1)
    classes = ClassSet(names, text, torch.arange(args.classes, device=device), "a photo of a {}, a type of texture.")
    cls = get_method(name)
    hp = resolve_hparams(cls, "dtd", 16, args.preset, {"batch_size": args.batch})
    torch.manual_seed(0)
    method = cls(hp)
    method.setup(ImageTask(bb, classes, None, None, "dtd", 16, 1, args.preset, hp, device, None))
    method.to(device).train()
    cfg = train_config(hp, {})
    precision = resolve_precision(cfg.precision, device)
    if precision.half:
        method.to_half()
    params = [p for p in method.parameters() if p.requires_grad]
    opt = (torch.optim.AdamW(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay) if cfg.optimizer == "adamw"
           else torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
    size = bb.image_size
    images = torch.randn(args.batch, 3, size, size, device=device)
    labels = torch.arange(args.batch, device=device) % args.classes
    if precision.half:
        images = images.half()
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    times, activations = [], []
    rss_before = _rss_mb()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    for _ in range(args.steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        saved[0] = 0
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast(device.type, dtype=precision.autocast, enabled=precision.autocast is not None):
                loss = method.loss((images, labels), 1)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        activations.append(saved[0])
    peak = ((torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda"
            else _rss_mb() - rss_before)
    return {"method": name, "precision": precision.describe()["used"], "step_s_best": min(times[1:]),
            "step_s_median": statistics.median(times[1:]), "saved_activations_mb": activations[-1] / 2**20,
            "peak_mem_mb": peak, "peak_kind": "cuda max_memory_allocated - before" if device.type == "cuda"
            else "peak RSS growth over the steps", "trainable_params": sum(p.numel() for p in params),
            "loss": float(loss)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fewclip-tiny-vit")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="clean", choices=("clean", "official"))
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args)))
        return {}
    passed = [a for a in (argv if argv is not None else sys.argv[1:])]
    rows = []
    for name in METHODS:
        if "--json" in passed:
            i = passed.index("--json")
            passed = passed[:i] + passed[i + 2:]
        proc = subprocess.run([sys.executable, __file__, *passed, "--one", name], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    lora, coop = rows
    out = {"model": args.model, "device": args.device, "preset": args.preset, "classes": args.classes,
           "batch": args.batch, "steps": args.steps, "threads": args.threads, "torch": torch.__version__,
           "machine": platform.processor() or platform.machine(), "rows": rows,
           "ratio_step": lora["step_s_best"] / coop["step_s_best"],
           "ratio_activations": lora["saved_activations_mb"] / max(coop["saved_activations_mb"], 1e-9)}
    print(f"{args.model} on {args.device}, {args.classes} classes, batch {args.batch}, preset {args.preset}")
    print(f"{'method':<10} {'precision':<44} {'step s (best)':>13} {'median':>8} {'act. MB':>8} {'peak MB':>8} "
          f"{'params':>8}")
    for r in rows:
        print(f"{r['method']:<10} {r['precision']:<44} {r['step_s_best']:>13.4f} {r['step_s_median']:>8.4f} "
              f"{r['saved_activations_mb']:>8.1f} {r['peak_mem_mb']:>8.1f} {r['trainable_params']:>8}")
    print(f"clip_lora / coop: step time x{out['ratio_step']:.2f}, saved activations x{out['ratio_activations']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
