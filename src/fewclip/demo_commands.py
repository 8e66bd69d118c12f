"""The demo verb: `fewclip pretrain-demo` trains the embedded demo's micro-CLIP checkpoint."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("pretrain-demo",
                       help="pretrain the demo's micro-CLIP on generated image-caption pairs (CPU, deterministic)")
    p.add_argument("--out", required=True, help="checkpoint path (a state dict), e.g. results/demo/micro_clip.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="open_clip model name (default fewclip-micro-vit)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the demo's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--eval-root", default=None,
                   help="a demo data root: afterwards print zero-shot top-1 on every demo dataset found there")
    p.set_defaults(func=cmd_pretrain_demo)


def cmd_pretrain_demo(args) -> int:
    from .errors import ConfigError
    from .models import pretrain

    steps = pretrain.STEPS if args.steps is None else args.steps
    batch = pretrain.BATCH_SIZE if args.batch_size is None else args.batch_size
    if steps < 1 or batch < 2:
        raise ConfigError(f"--steps must be >= 1 and --batch-size >= 2 (got {steps}, {batch})")
    model = args.model or pretrain.MODEL
    summary = pretrain.pretrain_micro_clip(args.out, seed=args.seed, steps=steps, batch_size=batch,
                                           model_name=model, log=lambda m: print(m, flush=True))
    if args.eval_root:
        from pathlib import Path

        from .data.datasets import DEMO_DATASETS, get_spec
        from .models.backbone import load_backbone

        backbone = load_backbone(model, str(Path(args.out).absolute()))
        found = [d for d in DEMO_DATASETS if (Path(args.eval_root) / get_spec(d).folder).is_dir()]
        summary["zero_shot_top1"] = {d: round(pretrain.zero_shot_accuracy(backbone, args.eval_root, d), 2)
                                     for d in found}
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
