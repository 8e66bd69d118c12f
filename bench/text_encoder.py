"""Text encoder without waste (issue 19.1-3): token positions, FLOPs and step times, before/after.

    python bench/text_encoder.py                        # tiny ViT, the 1000 ImageNet names, batch 32, CPU
    python bench/text_encoder.py --classes 100 --steps 1 --json out.json
    python bench/text_encoder.py --device cuda --model ViT-B-16   # on a GPU (bf16 autocast)

For CoCoOp (4 contexts from 'a photo of a', one context per image) and CoOp (16 random contexts,
shared), both at batch --batch over the first --classes ImageNet class names (open_clip's
`IMAGENET_CLASSNAMES`, open_clip's tokenizer), side by side in one process on the same inputs:

- before: every prompt padded to the longest and run through open_clip's own transformer with an
  explicit mask (`prompts.FAST_TEXT = False`, the code before issue 19);
- after: `text_encoder.encode_causal`: each prompt only up to its EOT, the shared [SOS, context]
  prefix once (CoCoOp: once per image), scaled_dot_product_attention with is_causal.

Printed per method: token positions through the text transformer per step (counted by a hook on
the first text block) and per image, text-encoder FLOPs of one forward (torch.utils.flop_counter),
whether activations are recomputed (text_encoder.should_recompute), the loss / gradient
agreement of the two paths, and seconds per optimisation step (forward + backward + SGD), the
best of --steps after one warm-up step, before and after alternating.
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

METHODS = {"cocoop": {}, "coop": {}}  # CoCoOp: n_ctx 4 'a photo of a'; CoOp: n_ctx 16 random (defaults)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(method_name, bb, n_classes, batch, device):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from fewclip.engine.inputs import ImageTask
    from fewclip.methods import ClassSet, get_method, resolve_hparams

    names = list(IMAGENET_CLASSNAMES[:n_classes])
    text = F.normalize(torch.randn(n_classes, bb.embed_dim, device=device), dim=-1)
    classes = ClassSet(names, text, torch.arange(n_classes, device=device))
    cls = get_method(method_name)
    # ImageNet-scale runs: CoOp's few-shot table; CoCoOp's (its DG/cross-dataset source model)
    protocol = "dg" if method_name == "cocoop" else "fewshot"
    hp = resolve_hparams(cls, "imagenet", 16, "clean", {"batch_size": batch, **METHODS[method_name]}, protocol)
    method = cls(hp)
    method.setup(ImageTask(bb, classes, None, None, "imagenet", 16, 1, "clean", hp, device, None))
    method.to(device).train()
    return method, classes


def text_call(method, classes, f):
    """The text-encoder call of one step: (function, its learned inputs)."""
    from fewclip.models.prompts import encode_prompts

    bank = method.prompt.bank(classes.names)
    if method.name == "cocoop":
        return lambda: encode_prompts(method.prompt, bank, method.prompt.ctx.unsqueeze(0)
                                      + method.meta_net(f).unsqueeze(1), per_image=True)
    return lambda: encode_prompts(method.prompt, bank, class_index=method.class_index(classes))


def positions_and_flops(method, classes, f):
    """(token positions through the text transformer, text-encoder FLOPs) of one forward."""
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    blk = method.clip.transformer.resblocks[0]
    hook = blk.mlp.c_fc.register_forward_pre_hook(lambda m, inp: rows.append(inp[0].shape[:-1].numel()))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            text_call(method, classes, f)()
    finally:
        hook.remove()
    return sum(rows), counter.get_total_flops()


def step_seconds(method, data, device):
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    sync(device)
    t = time.perf_counter()
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        method.loss((x, y), 0).backward()
        opt.step()
    sync(device)
    return (time.perf_counter() - t) / len(data)


def loss_and_grads(method, images, labels):
    method.zero_grad(set_to_none=True)
    loss = method.loss((images, labels), 0)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.requires_grad}


def compare(method, images, labels):
    """Loss and gradients of both paths (fp32), and the recomputation decision each one took."""
    from fewclip.models import prompts, text_encoder

    decide = text_encoder.should_recompute
    out = {}
    for fast, key in ((False, "before"), (True, "after")):
        calls = []
        text_encoder.should_recompute = lambda act, free: calls.append((act, decide(act, free))) or calls[-1][1]
        prompts.FAST_TEXT = fast
        try:
            out[key] = loss_and_grads(method, images, labels)
        finally:
            text_encoder.should_recompute = decide
        out[key + "_recompute"] = {"recompute": any(r for _, r in calls),
                                   "activation_gib_estimate": sum(a for a, _ in calls) / 2**30}
    (lb, gb), (la, ga) = out["before"], out["after"]
    rel = max(((ga[n] - gb[n]).abs().max() / gb[n].abs().max().clamp_min(1)).item() for n in gb)
    return {"loss_before": lb, "loss_after": la, "loss_abs_diff": abs(la - lb), "grad_max_rel_diff": rel,
            "recompute": {"before": out["before_recompute"], "after": out["after_recompute"]}}


def bench_method(name, bb, args, device):
    from fewclip.models import prompts

    torch.manual_seed(args.seed)
    method, classes = build(name, bb, args.classes, args.batch, device)
    g = torch.Generator().manual_seed(args.seed)
    data = [(torch.randn(args.batch, 3, bb.image_size, bb.image_size, generator=g).to(device),
             torch.randint(args.classes, (args.batch,), generator=g).to(device)) for _ in range(args.steps + 1)]
    f = F.normalize(torch.randn(args.batch, bb.embed_dim, device=device), dim=-1)
    out = {"method": name, "n_ctx": method.prompt.n_ctx}
    for fast, key in ((False, "before"), (True, "after")):
        prompts.FAST_TEXT = fast
        positions, flops = positions_and_flops(method, classes, f)
        out[key] = {"positions_per_step": positions, "text_gflops_per_step": flops / 1e9, "seconds_per_step": []}
    per_image = args.batch if name == "cocoop" else 1
    checks = compare(method, *data[0])
    recompute = checks.pop("recompute")
    for key in ("before", "after"):
        out[key]["positions_per_image"] = out[key]["positions_per_step"] / per_image
        out[key].update(recompute[key])
    out.update(checks)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for fast in (False, True):  # warm-up
            prompts.FAST_TEXT = fast
            step_seconds(method, data[:1], device)
        for x in data[1:]:
            for fast, key in ((False, "before"), (True, "after")):
                prompts.FAST_TEXT = fast
                out[key]["seconds_per_step"].append(step_seconds(method, [x], device))
    prompts.FAST_TEXT = True
    for key in ("before", "after"):
        out[key]["best_seconds_per_step"] = min(out[key]["seconds_per_step"])
    out["speedup"] = out["before"]["best_seconds_per_step"] / out["after"]["best_seconds_per_step"]
    out["position_ratio"] = out["before"]["positions_per_step"] / out["after"]["positions_per_step"]
    out["flop_ratio"] = out["before"]["text_gflops_per_step"] / out["after"]["text_gflops_per_step"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="fewclip-tiny-vit")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per path (after one warm-up)")
    ap.add_argument("--methods", default="cocoop,coop")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from fewclip.models.backbone import load_backbone

    bb = load_backbone(args.model, "none", device)
    results = [bench_method(m, bb, args, device) for m in args.methods.split(",")]
    print(f"text encoder before/after (issue 19): {args.model}, {args.classes} ImageNet classes, batch {args.batch}, "
          f"{device}, {torch.get_num_threads()} thread(s)")
    print(f"{'method':8s} {'path':7s} {'positions/step':>15s} {'per image':>10s} {'text GFLOP':>11s} "
          f"{'recompute':>9s} {'s/step':>8s}")
    for r in results:
        for key in ("before", "after"):
            s = r[key]
            print(f"{r['method']:8s} {key:7s} {s['positions_per_step']:15,d} {s['positions_per_image']:10,.0f} "
                  f"{s['text_gflops_per_step']:11.2f} {str(s['recompute']):>9s} {s['best_seconds_per_step']:8.3f}")
        print(f"{'':8s} ratio   {r['position_ratio']:15.2f}x {'':10s} {r['flop_ratio']:10.2f}x {'':9s} "
              f"{r['speedup']:7.2f}x   |loss diff| {r['loss_abs_diff']:.1e}, max rel grad diff "
              f"{r['grad_max_rel_diff']:.1e}")
    if device.type != "cuda":
        print("GPU step times: still open (run with --device cuda --model ViT-B-16, or bench/gpu_path.py)")
    if args.json:
        info = {"bench": "text_encoder", "model": args.model, "classes": args.classes, "batch": args.batch,
                "device": str(device), "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
                f"torch {torch.__version__}, {torch.get_num_threads()} threads", "results": results}
        Path(args.json).write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
