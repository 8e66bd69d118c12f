"""GDA's fit on ImageNet-sized random features: seconds on the CPU (or a GPU).

    python bench/gda_fit.py                       # 1000 classes × 16 shots × 10 views × 512, CPU
    python bench/gda_fit.py --dim 1024 --json out.json   # RN50's width

The whole `GDA.setup` of an official ImageNet cell, through the method: class means and the shrinkage
precision d·pinv(S + tr(S)/(n−1)·I) from the 160,000 stored views, the linear head, and the α search
on the 50,000 test features (ImageNet's official search split); then the base-to-new estimator of 500
unseen classes (their 64 nearest views among the 80,000 of 500 base classes, one d×d inverse each).
Features are random class prototypes plus noise, L2-normalised (what the fit does not depend on).
CPU seconds are printed beside the wall time: on a shared machine, wall time / threads ≈ CPU seconds
only when the cores are idle.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def features(n_per_class: int, prototypes: torch.Tensor, noise: float, gen: torch.Generator, views: int = 0):
    """([views,] N, d) normalised rows around the prototypes, and their labels (class-major)."""
    c, d = prototypes.shape
    labels = torch.arange(c).repeat_interleave(n_per_class)
    shape = (views, len(labels), d) if views else (len(labels), d)
    x = prototypes[labels] + noise * torch.randn(shape, generator=gen)
    return x / x.norm(dim=-1, keepdim=True), labels


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from fewclip.data.datasets import get_spec
    from fewclip.engine.features import Features
    from fewclip.engine.inputs import FeatureTask
    from fewclip.methods import ClassSet, get_method, resolve_hparams
    from fewclip.methods.gda import unseen_head

    gen = torch.Generator().manual_seed(0)
    c, d = args.classes, args.dim
    protos = torch.randn(c, d, generator=gen)
    views, labels = features(args.shots, protos, 3.0, gen, args.views)
    test, test_labels = features(args.test_per_class, protos, 3.0, gen)
    text = protos + 4.0 * torch.randn(c, d, generator=gen)
    classes = ClassSet([f"c{i}" for i in range(c)], text / text.norm(dim=-1, keepdim=True), torch.arange(c))
    paths = [f"t{i}" for i in range(len(labels))]
    train = Features(paths, labels, views[0])
    vfeat = Features(paths, labels, views)
    tfeat = Features([f"x{i}" for i in range(len(test_labels))], test_labels, test)
    cls = get_method("gda")
    hp = resolve_hparams(cls, "imagenet", args.shots, "official")
    task = FeatureTask(classes, train, vfeat, train, "imagenet", args.shots, 1, "official", hp, torch.device("cpu"),
                       get_spec("imagenet"), test=tfeat)
    method = cls(hp)
    t0, c0 = time.perf_counter(), time.process_time()
    info = method.setup(task)
    fit, fit_cpu = time.perf_counter() - t0, time.process_time() - c0

    half = c // 2  # base-to-new: 500 base classes' views, 500 unseen classes
    base_vecs = views[:, : half * args.shots].reshape(-1, d)
    t0, c0 = time.perf_counter(), time.process_time()
    unseen_head(base_vecs, classes.text_features[half:], 64, 16)
    unseen, unseen_cpu = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        acc = 100.0 * (method.logits(test, classes).argmax(1) == test_labels).float().mean().item()

    out = {"classes": c, "shots": args.shots, "views": args.views, "dim": d,
           "vectors": int(views.shape[0] * views.shape[1]), "test": int(len(test_labels)),
           "fit_seconds": fit, "fit_cpu_seconds": fit_cpu, "alpha": info["alpha"], "test_acc": acc,
           "unseen_classes": c - half, "unseen_seconds": unseen, "unseen_cpu_seconds": unseen_cpu,
           "threads": torch.get_num_threads(),
           "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
           "torch": torch.__version__}
    print(f"GDA fit (means, shrinkage precision, head, α search on {out['test']:,} test features): "
          f"{out['vectors']:,} views × {d} → {fit:.1f} s ({fit_cpu:.1f} CPU s)   "
          f"[α = {info['alpha']:g}, test acc {acc:.1f} %]")
    print(f"GDA base-to-new estimator, {c - half} unseen classes from {base_vecs.shape[0]:,} views: {unseen:.1f} s "
          f"({unseen_cpu:.1f} CPU s)")
    out["load_average"] = os.getloadavg()[0]
    print(f"({out['threads']} CPU threads, load average {out['load_average']:.1f}, torch {torch.__version__}, "
          f"{out['processor']})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
