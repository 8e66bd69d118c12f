"""Memory (issue 9.4): peak RSS of the largest demo-like jobs, and the feature store's size on disk.

    python bench/memory.py
    python bench/memory.py --classes 20 --n-test 50 --json bench/results_memory.json

Writes an ImageNet-layout fixture (the largest dataset of the grid; --classes x --n-train train,
--classes x --n-test test images) to a temp dir and runs each job as its own `fewclip run`
subprocess on CPU with the tiny random model (`fewclip-tiny-vit`, `--pretrained none`):
a prompt method on images (dpt and cocoop) and Tip-Adapter-F on stored features (whose first
run also fills the feature store). Peak RSS is the child's `ru_maxrss` from os.wait4 (that
process only). Then the store's files are measured: MB per dataset and bytes per stored image
(test + few-shot + V views per few-shot train image).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_job(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(out)
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    rss_kib = usage.ru_maxrss  # KiB on Linux
    return rss_kib / 1024, time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="imagenet")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--n-train", type=int, default=16, help="train images per class")
    ap.add_argument("--n-test", type=int, default=50, help="test images per class")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--backbone", default="fewclip-tiny-vit")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    from fewclip.data.datasets import load_dataset
    from fewclip.data.fixtures import write_fixture

    fewclip = str(Path(sys.executable).parent / "fewclip")
    tmp = Path(tempfile.mkdtemp(prefix="fewclip-bench-memory-"))
    rows = []
    try:
        data = tmp / "data"
        write_fixture(args.dataset, data, n_classes=args.classes, n_train=args.n_train, n_test=args.n_test)
        ds = load_dataset(args.dataset, str(data))
        features = tmp / "features"

        def job(method, sets):
            cmd = [fewclip, "run", "--backbone", args.backbone, "--pretrained", "none", "--device", "cpu",
                   "--data-root", str(data), "--dataset", args.dataset, "--method", method,
                   "--shots", str(args.shots), "--seed", "1", "--out", str(tmp / "runs" / method),
                   "--features", str(features)]
            for s in sets:
                cmd += ["--set", s]
            return cmd

        # interpreter + imports only: the floor every job pays
        rss, sec = run_job([sys.executable, "-c", "import torch, open_clip, fewclip.engine.run"])
        rows.append(("python + torch + open_clip imports", rss, sec))
        jobs = [
            ("tip_adapter_f (encodes the store)", "tip_adapter_f", ["epochs=2", f"views={args.views}"]),
            ("tip_adapter_f (store filled)", "tip_adapter_f", ["epochs=2", f"views={args.views}"]),
            ("cocoop (images, batch 32)", "cocoop", ["epochs=1", "batch_size=32"]),
            ("dpt (images)", "dpt", ["epochs=1", "guidance_epochs=1", "warmup_epochs=1"]),
        ]
        for label, method, sets in jobs:
            rss, sec = run_job(job(method, sets))
            rows.append((label, rss, sec))
            shutil.rmtree(tmp / "runs" / method, ignore_errors=True)

        store = features / args.backbone / args.dataset
        files = {p.name: p.stat().st_size for p in sorted(store.iterdir()) if p.is_file()}
        import torch

        n_test = len(ds.test)
        fs = torch.load(store / "fewshot.pt", weights_only=True) if (store / "fewshot.pt").is_file() else None
        vw = torch.load(store / "views.pt", weights_only=True) if (store / "views.pt").is_file() else None
        n_fewshot = len(fs["paths"]) if fs else 0
        n_view_rows = vw["features"].shape[0] * vw["features"].shape[1] if vw is not None else 0
        dim = int(fs["features"].shape[-1]) if fs else None
        n_images = n_test + n_fewshot + n_view_rows
        total = sum(files.values())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "bench": "memory", "dataset": args.dataset, "classes": args.classes, "test_images": n_test,
        "shots": args.shots, "views": args.views, "backbone": args.backbone, "feature_dim": dim,
        "jobs": [{"job": j, "peak_rss_mib": r, "seconds": s} for j, r, s in rows],
        "store_files_bytes": files, "store_bytes": total, "stored_images": n_images,
        "bytes_per_image": total / max(n_images, 1),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}",
    }
    print(f"memory: {args.dataset} fixture, {args.classes} classes, {n_test} test images, {args.shots}-shot, "
          f"{args.backbone} (d={dim}), CPU")
    print(f"{'job (own process)':<40}{'peak RSS MiB':>13}{'seconds':>9}")
    for j, r, s in rows:
        print(f"{j:<40}{r:>13.0f}{s:>9.1f}")
    print(f"feature store {args.backbone}/{args.dataset}: {total / 2**20:.2f} MB for {n_images} stored images "
          f"({n_test} test + {n_fewshot} few-shot + {n_view_rows} view rows) = {total / max(n_images, 1):.0f} bytes/image "
          f"(fp16 features: {2 * dim} bytes)")
    print("  " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in files.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
