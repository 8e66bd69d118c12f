"""The data verbs: `download`, `doctor`, `generate`, `split` and `pretrain-demo`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..constants import PRESETS
from .args import seed_type, shots_type


def register(sub) -> None:
    p = sub.add_parser(
        "download",
        help="fetch, verify, extract and arrange datasets into the CoOp layout (ImageNet: instructions + check)",
        description="Fetch, verify, extract and arrange datasets into CoOp's layout under --data-root. "
        "Datasets: the 15 of SPEC §4 (imagenet, caltech101, oxford_pets, ..., imagenet_r; see "
        "`fewclip doctor`), or 'all' = every dataset of the sources table.",
    )
    p.add_argument("datasets", nargs="+", metavar="DATASET", help="dataset names, or 'all'")
    p.add_argument("--data-root", required=True)
    p.add_argument("--mirror", action="append", default=[], metavar="URL_BASE",
                   help="tried first for every file as URL_BASE/<file name> (repeatable)")
    p.add_argument("--sources", help="a sources table (JSON) to use instead of the packaged one")
    p.add_argument("--retries", type=int, default=3,
                   help="resumed attempts per URL after a dropped connection (default 3)")
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default 60)")
    p.add_argument("--keep-archives", action="store_true",
                   help="keep the verified archives in <data-root>/.downloads after extraction")
    p.add_argument("--force", action="store_true",
                   help="replace a dataset folder that exists but is not ok (the old one is renamed "
                   "<folder>.replaced-<time>, never deleted)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("doctor", help="check which datasets under a data root are ready")
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", action="append", help="only this dataset (repeatable); default: the 15 benchmark datasets")
    p.add_argument("--json", action="store_true", help="print one JSON object keyed by dataset")
    p.add_argument("--deep", action="store_true", help="also decode every image (finds corrupt files; slow)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("generate", help="write a generated data root: tiny fixtures of all 15 layouts, or the demo")
    p.add_argument("kind", choices=["fixtures", "demo"])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=seed_type, default=0)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("split", help="write the few-shot manifest of one (dataset, K, seed)")
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--shots", type=shots_type, required=True)
    p.add_argument("--seed", type=seed_type, required=True)
    p.add_argument("--preset", default="clean", choices=PRESETS)
    p.add_argument("--out", required=True, help="manifest JSON path")
    p.set_defaults(func=cmd_split)

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


def cmd_download(args) -> int:
    from ..data import download
    from ..data.datasets import DATASETS, get_spec
    from ..errors import DataError

    table = download.load_sources(args.sources)
    names = [n for n in table["datasets"] if n in DATASETS] if args.datasets == ["all"] else args.datasets
    for name in names:
        get_spec(name)
    failures = []
    for name in names:
        try:
            download.prepare(name, args.data_root, table, mirrors=args.mirror, retries=args.retries,
                             timeout=args.timeout, keep_archives=args.keep_archives, force=args.force)
        except DataError as err:
            if len(names) == 1:
                raise
            print(f"{name}: FAILED: {err}", file=sys.stderr)
            failures.append(name)
    if failures:
        raise DataError(f"{len(failures)} of {len(names)} dataset(s) not prepared: {', '.join(failures)} "
                        "(messages above); fix and rerun: finished datasets are skipped")
    return 0


def cmd_doctor(args) -> int:
    from ..data.datasets import BENCHMARK_DATASETS, check_dataset, get_spec

    names = args.dataset or list(BENCHMARK_DATASETS)
    for n in names:
        get_spec(n)
    report = {n: check_dataset(n, args.data_root) for n in names}
    if args.deep:
        for n, r in report.items():
            if r["status"] == "ok":
                _decode_all(n, args.data_root, r)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"data root: {Path(args.data_root).resolve()}")
        for n, r in report.items():
            sizes = "" if r["status"] == "missing" else f"  classes={r['classes']} train={r['train']} val={r['val']} test={r['test']}"
            print(f"{n:16s} {r['status']:8s}{sizes}")
            for problem in r["problems"]:
                print(f"    - {problem}")
    return 0 if all(r["status"] == "ok" for r in report.values()) else 1


def _decode_all(name: str, data_root: str, report: dict) -> None:
    """Decode every image of an ok dataset; corrupt files make it `broken`, each named."""
    from concurrent.futures import ThreadPoolExecutor

    from ..data.datasets import load_dataset
    from ..data.images import load_image
    from ..errors import DataError

    ds = load_dataset(name, data_root)
    paths = sorted({ds.abspath(it) for split in ("train", "val", "test") for it in ds.split(split)})

    def check(path):
        try:
            load_image(path)
        except DataError as err:
            return str(err)
        return None

    with ThreadPoolExecutor(4) as pool:
        bad = [msg for msg in pool.map(check, paths) if msg]
    if bad:
        report["status"] = "broken"
        report["problems"] += bad


def cmd_generate(args) -> int:
    from ..io import write_json

    out = Path(args.out)
    if args.kind == "fixtures":
        from ..data.fixtures import write_all_fixtures

        write_all_fixtures(out, seed=args.seed)
    else:
        from ..data.demo import write_demo_world

        write_demo_world(out, seed=args.seed)
    write_json(out / f".fewclip-{args.kind}.json", {"kind": args.kind, "seed": args.seed})
    return 0


def cmd_split(args) -> int:
    from ..data.datasets import load_dataset
    from ..data.fewshot import make_manifest, write_manifest

    ds = load_dataset(args.dataset, args.data_root)
    write_manifest(args.out, make_manifest(ds, args.shots, args.seed, args.preset))
    return 0


def cmd_pretrain_demo(args) -> int:
    from ..errors import ConfigError
    from ..models import pretrain

    steps = pretrain.STEPS if args.steps is None else args.steps
    batch = pretrain.BATCH_SIZE if args.batch_size is None else args.batch_size
    if steps < 1 or batch < 2:
        raise ConfigError(f"--steps must be >= 1 and --batch-size >= 2 (got {steps}, {batch})")
    model = args.model or pretrain.MODEL
    summary = pretrain.pretrain_micro_clip(args.out, seed=args.seed, steps=steps, batch_size=batch,
                                           model_name=model, log=lambda m: print(m, flush=True))
    if args.eval_root:
        from ..data.datasets import DEMO_DATASETS, get_spec
        from ..models.backbone import load_backbone

        backbone = load_backbone(model, str(Path(args.out).absolute()))
        found = [d for d in DEMO_DATASETS if (Path(args.eval_root) / get_spec(d).folder).is_dir()]
        summary["zero_shot_top1"] = {d: round(pretrain.zero_shot_accuracy(backbone, args.eval_root, d), 2)
                                     for d in found}
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
