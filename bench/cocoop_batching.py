"""CoCoOp batching (issues 9.2, 19.1): fewclip's one-pass batched CoCoOp vs the official per-image loop,
each with the text encoder before and after issue 19.

    python bench/cocoop_batching.py                     # fewclip-tiny-vit, 100 classes, batch 32, CPU
    python bench/cocoop_batching.py --device cuda --model ViT-B-16 --classes 1000 --json out.json

All paths use the same CoCoOp module (`fewclip.methods.cocoop`, random weights via
`--pretrained none`) on the same batch:

- batched (fewclip): `method.loss((images, labels))`: the B x C prompts of the whole batch go
  through the text encoder in one pass; one backward.
- per-image (official style): for each image, that image's logits (its own Meta-Net context,
  C prompts through the text encoder), cross-entropy, averaged over the batch; one backward.
- text encoder "padded" (before issue 19, `prompts.FAST_TEXT = False`): every prompt padded to the
  longest through open_clip's transformer; "shared prefix" (after): each prompt only up to its
  EOT, the [SOS, context] prefix computed once per image.

First the losses and the gradients of every trainable parameter are compared on one batch
(asserted: |loss difference| <= 1e-5, gradients allclose) for batched/per-image x padded/shared
prefix, then forward + backward + SGD step is timed for an "epoch" of --batches batches in each
path (same inputs), and the ratios printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(model_name: str, n_classes: int, batch: int, device):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from fewclip.engine.inputs import ImageTask
    from fewclip.methods import ClassSet, get_method, resolve_hparams
    from fewclip.models.backbone import load_backbone

    bb = load_backbone(model_name, "none", device)
    names = list(IMAGENET_CLASSNAMES[:n_classes])
    text = F.normalize(torch.randn(n_classes, bb.embed_dim, device=device), dim=-1)
    classes = ClassSet(names, text, torch.arange(n_classes, device=device))
    cls = get_method("cocoop")
    hp = resolve_hparams(cls, "imagenet", 16, "clean", {"batch_size": batch}, "dg")  # CoCoOp's ImageNet run
    method = cls(hp)
    method.setup(ImageTask(bb, classes, None, None, "imagenet", 16, 1, "clean", hp, device, None))
    method.to(device)
    method.train()
    return bb, method, classes


def batched_loss(method, images, labels):
    return method.loss((images, labels), 0)


def per_image_loss(method, images, labels):
    """The official CoCoOp forward: one image at a time, loss averaged over the batch."""
    total = 0.0
    for i in range(images.shape[0]):
        logits = method.logits(images[i : i + 1], method.train_classes)
        total = total + F.cross_entropy(logits, labels[i : i + 1])
    return total / images.shape[0]


def grads(method):
    return {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.requires_grad}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="fewclip-tiny-vit")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=3, help="batches per timed epoch (10 on a GPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared machine)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    bb, method, classes = build(args.model, args.classes, args.batch, device)
    g = torch.Generator().manual_seed(args.seed)
    data = [(torch.randn(args.batch, 3, bb.image_size, bb.image_size, generator=g).to(device),
             torch.randint(args.classes, (args.batch,), generator=g).to(device)) for _ in range(args.batches)]

    from fewclip.models import prompts

    def run(fast, loss_fn, x, y):
        prompts.FAST_TEXT = fast
        method.zero_grad(set_to_none=True)
        loss = loss_fn(method, x, y)
        loss.backward()
        return loss.item(), grads(method)

    # 1. same loss, same gradients (one batch, no optimiser step); the per-image padded loop is the reference
    images, labels = data[0]
    paths = {"batched, padded (before)": (False, batched_loss),
             "per-image loop, padded (before)": (False, per_image_loss),
             "batched, shared prefix (after)": (True, batched_loss),
             "per-image loop, shared prefix (after)": (True, per_image_loss)}
    checks = {name: run(fast, fn, images, labels) for name, (fast, fn) in paths.items()}
    lp, gp = checks["per-image loop, padded (before)"]
    lb, _ = checks["batched, shared prefix (after)"]
    loss_diff = max(abs(loss - lp) for loss, _ in checks.values())
    grad_diff = max((g[n] - gp[n]).abs().max().item() for _, g in checks.values() for n in gp)
    grad_scale = max(gp[n].abs().max().item() for n in gp)
    assert loss_diff <= 1e-5, f"losses differ by {loss_diff:.3g}"
    for name, (_, g) in checks.items():
        for n in gp:
            assert torch.allclose(g[n], gp[n], rtol=1e-4, atol=1e-6), f"gradients of {n} differ ({name})"

    # 2. time an epoch of each path (forward + backward + SGD step)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def epoch(fast, loss_fn):
        prompts.FAST_TEXT = fast
        sync(device)
        t = time.perf_counter()
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            loss_fn(method, x, y).backward()
            opt.step()
        sync(device)
        return time.perf_counter() - t

    seconds = {name: epoch(*path) for name, path in paths.items()}  # the checks above were the warm-up
    prompts.FAST_TEXT = True
    t_batched, t_loop = seconds["batched, shared prefix (after)"], seconds["per-image loop, shared prefix (after)"]
    t_before = seconds["batched, padded (before)"]

    result = {
        "bench": "cocoop_batching", "model": args.model, "classes": args.classes, "batch": args.batch,
        "batches_per_epoch": args.batches, "device": str(device),
        "loss_batched": lb, "loss_per_image": lp, "loss_abs_diff": loss_diff,
        "grad_max_abs_diff": grad_diff, "grad_max_abs": grad_scale,
        "epoch_s_batched": t_batched, "epoch_s_per_image": t_loop, "ratio": t_loop / t_batched,
        "epoch_s": seconds, "batched_before_over_after": t_before / t_batched,
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
    }
    print(f"CoCoOp batching: {args.model}, {args.classes} classes, batch {args.batch}, "
          f"{args.batches} batches per epoch, {device}")
    print(f"loss batched {lb:.7f}  per-image {lp:.7f}  max |diff| {loss_diff:.2e} (<= 1e-5)  "
          f"max |grad diff| {grad_diff:.2e} (max |grad| {grad_scale:.2e})")
    print(f"{'path':<40}{'s/epoch':>9}{'ms/batch':>10}")
    for name, t in seconds.items():
        print(f"{name:<40}{t:>9.2f}{1000 * t / args.batches:>10.1f}")
    ok = "met" if result["ratio"] >= 5 else "NOT met"
    print(f"ratio per-image / batched (shared prefix): {result['ratio']:.1f}x (target >= 5x: {ok})")
    print(f"batched, padded / shared prefix: {result['batched_before_over_after']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
