"""One training step of each image-level prompt method: seconds per step on the CPU (or a GPU).

    python bench/prompt_step.py                         # tiny ViT, 10 classes, batch 4, CPU
    python bench/prompt_step.py --model fewclip-ref-vit --classes 100 --batch 8 --json out.json
    python bench/prompt_step.py --device cuda --model ViT-B-16 --batch 4   # on a GPU (bf16 autocast)

For coop, kgcoop (when registered), maple, promptsrc and vpt, each with its base-to-new settings
(random init: `--pretrained none`), one optimisation step (forward + backward + SGD) on a random
batch, the best of --steps after one warm-up step (one CPU thread by default). The deep-prompt
methods run both towers with their prompts; promptsrc also runs the frozen image encoder for its
regularisers. Depths beyond the model's layers prompt every layer (9 of ViT-B/16's 12).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

METHODS = ("coop", "kgcoop", "maple", "promptsrc", "vpt")


def step_seconds(name, bb, n_classes, batch, steps, device) -> float | None:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from fewclip.engine.inputs import ImageTask
    from fewclip.engine.run import train_config
    from fewclip.engine.train import resolve_precision
    from fewclip.methods import ClassSet, load_all, resolve_hparams

    registry = load_all()
    if name not in registry:
        return None
    cls = registry[name]
    names = list(IMAGENET_CLASSNAMES[:n_classes])
    text = torch.nn.functional.normalize(torch.randn(n_classes, bb.embed_dim, device=device), dim=-1)
    classes = ClassSet(names, text, torch.arange(n_classes, device=device))
    hp = resolve_hparams(cls, "dtd", 16, "clean", {"batch_size": batch}, "base2new")
    torch.manual_seed(0)
    method = cls(hp)
    method.setup(ImageTask(bb, classes, None, None, "dtd", 16, 1, "clean", hp, device, None))
    method.to(device).train()
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    precision = resolve_precision(train_config(hp, {}).precision, device)
    size = bb.image_size
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.arange(batch, device=device) % n_classes
    times = []
    for _ in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=precision.autocast, enabled=precision.autocast is not None):
            loss = method.loss((images, labels), 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fewclip-tiny-vit")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from fewclip.models.backbone import load_backbone

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bb = load_backbone(args.model, args.pretrained, device)
    rows = {}
    print(f"{args.model} on {device}, {args.classes} classes, batch {args.batch} (best of {args.steps} steps)")
    for name in METHODS:
        secs = step_seconds(name, bb, args.classes, args.batch, args.steps, device)
        rows[name] = secs
        print(f"  {name:10s} {'not registered' if secs is None else f'{secs * 1000:8.1f} ms/step'}")
    out = {"model": args.model, "device": str(device), "classes": args.classes, "batch": args.batch,
           "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "seconds_per_step": rows}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
