"""The core verbs: doctor, split, encode, run, methods. Each is a thin wrapper over the library."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .errors import ConfigError

MAX_SEED = 2**32 - 1  # what every RNG fewclip seeds (random, torch, numpy) accepts
DEVICE_NAME = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def _int_type(what: str, low: int, high: int | None = None):
    """An argparse type: an integer in [low, high]; anything else is a usage error (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"{low}..{high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"{what} must be {span}, got {value}")
        return value

    return parse


seed_type = _int_type("a seed", 0, MAX_SEED)
shots_type = _int_type("shots (K images per class)", 1)
count_type = _int_type("a count", 0)


def device_type(text: str) -> str:
    if not DEVICE_NAME.match(text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N or auto")
    return text


def register(sub) -> None:
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

    p = sub.add_parser("methods", help="list the registered methods")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("split", help="write the few-shot manifest of one (dataset, K, seed)")
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--shots", type=shots_type, required=True)
    p.add_argument("--seed", type=seed_type, required=True)
    p.add_argument("--preset", default="clean", choices=["clean", "official"])
    p.add_argument("--out", required=True, help="manifest JSON path")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("encode", help="fill the feature store of one (backbone, dataset)")
    _backbone_args(p)
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--manifests", nargs="*", default=[], help="manifests whose images to encode (+ views)")
    p.add_argument("--views", type=count_type, default=10, help="augmented views per few-shot train image")
    p.add_argument("--templates", nargs="*", default=["dataset", "ensemble7"])
    p.add_argument("--out", required=True, help="the store folder: results/features/{backbone}/{dataset}")
    p.add_argument("--workers", type=count_type, default=0)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("run", help="run one grid cell (fit + evaluate) into a run directory")
    _backbone_args(p)
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--method", nargs="+", required=True,
                   help="method(s); several values run their cells in one process (--out must then contain {method})")
    p.add_argument("--shots", type=shots_type, nargs="+", required=True,
                   help="K; several values run several cells in one process (--out must then contain {shots})")
    p.add_argument("--seed", type=seed_type, nargs="+", required=True,
                   help="seed(s); several values need {seed} in --out (and in --manifest)")
    p.add_argument("--out", required=True, help="run directory; may contain {method}, {shots} and {seed}")
    p.add_argument("--preset", default="clean", choices=["clean", "official"])
    p.add_argument("--protocol", default="fewshot", choices=["fewshot", "base2new", "dg"])
    p.add_argument("--eval", dest="evals", nargs="*", default=[], help="DG target datasets (--protocol dg)")
    p.add_argument("--manifest", help="few-shot manifest (from `fewclip split`); sampled here if absent")
    p.add_argument("--features", help="feature-store root (default results/features)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="override a hyper-parameter (repeatable), e.g. --set epochs=1 for every --method, "
                        "--set coop.epochs=1 for one of them")
    p.add_argument("--config-hash", default="")
    p.add_argument("--expect-hparams", nargs="+", default=[], metavar="SHA256",
                   help="the workflow's planned hyper-parameter digest per cell (`fewclip plan`), in the order "
                        "the cells run (method, then shots, then seed); a cell that would resolve other values is refused")
    p.add_argument("--workers", type=count_type, default=0)
    p.set_defaults(func=cmd_run)


def _backbone_args(p) -> None:
    p.add_argument("--backbone", required=True, help="open_clip model name, e.g. RN50, ViT-B-16, fewclip-tiny-vit")
    p.add_argument("--backbone-key", help="name used in paths (default: the model name)")
    p.add_argument("--pretrained", default="openai", help="open_clip tag, a checkpoint file, or none")
    p.add_argument("--device", default="auto", type=device_type, help="cpu, cuda, cuda:N or auto")


def cmd_doctor(args) -> int:
    from .data.datasets import BENCHMARK_DATASETS, check_dataset, get_spec

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

    from .data.datasets import load_dataset
    from .data.images import load_image
    from .errors import DataError

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


def cmd_methods(args) -> int:
    from .methods import load_all

    methods = load_all()
    rows = {n: {"needs": c.needs, "trains": c.trains, "hparams": c.hparams, "presets": c.presets,
                "doc": (c.__doc__ or sys.modules[c.__module__].__doc__ or "").strip().splitlines()[0]}
            for n, c in sorted(methods.items())}
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for n, r in rows.items():
            print(f"{n:16s} {r['needs']:9s} {r['doc']}")
    return 0


def cmd_split(args) -> int:
    from .data.datasets import load_dataset
    from .data.fewshot import make_manifest, write_manifest

    ds = load_dataset(args.dataset, args.data_root)
    write_manifest(args.out, make_manifest(ds, args.shots, args.seed, args.preset))
    return 0


def cmd_encode(args) -> int:
    from .gpus import claim

    claim(args.device)  # before torch touches CUDA: one device of the lock-file pool (see fewclip.gpus)
    from .data.datasets import Item, load_dataset
    from .data.fewshot import read_manifest
    from .engine.features import FeatureStore
    from .engine.run import _device
    from .models.backbone import load_backbone

    ds = load_dataset(args.dataset, args.data_root)
    backbone = load_backbone(args.backbone, args.pretrained, _device(args.device))
    store = FeatureStore(Path(args.out), ds, lambda: backbone, args.workers,
                         model=args.backbone, pretrained=args.pretrained)
    for t in args.templates:
        store.text(t)
    store.test()
    train, every = [], []
    for path in args.manifests:
        m = read_manifest(path)
        if m["dataset"] != ds.name:
            raise ConfigError(f"manifest {path} is for {m['dataset']}, not {ds.name}")
        t = [Item(p, lab, ds.classnames[lab]) for p, lab in m["train"]]
        train += t
        every += t + [Item(p, lab, ds.classnames[lab]) for p, lab in m["val"]]
    if every:
        store.fewshot(every)
    if train and args.views:
        store.views(train, args.views)
    store.write_manifest({"pretrained": backbone.pretrained, "sha256": backbone.sha256, "views": args.views})
    print(f"{ds.name}: {store.images_encoded} image encodings written to {args.out}")
    return 0


def parse_overrides(pairs: list[str], methods: list[str]) -> dict[str, dict]:
    """`--set` pairs per method: `KEY=VALUE` applies to every method of the run, `METHOD.KEY=VALUE`
    to that one (it wins over an unscoped KEY)."""
    from .plan import parse_key_values

    values = parse_key_values(pairs, "--set")
    shared = {k: v for k, v in values.items() if "." not in k}
    out = {m: dict(shared) for m in methods}
    for key, value in values.items():
        if "." in key:
            method, _, name = key.partition(".")
            if method not in out or not name:
                raise ConfigError(f"--set {key}=...: '{method}' is not one of this run's methods "
                                  f"({', '.join(methods)}); write --set METHOD.KEY=VALUE with one of them, or KEY=VALUE")
            out[method][name] = value
    return out


def cmd_run(args) -> int:
    """One cell, or several (methods × shots × seeds) in one process: cheap cells then share one
    start-up. Every cell is validated before the first one starts (a bad cell leaves nothing)."""
    from .gpus import claim

    if len(set(args.method)) < len(args.method):
        raise ConfigError(f"--method {' '.join(args.method)} names a method twice")
    cells = [(m, k, s) for m in args.method for k in args.shots for s in args.seed]
    for field, values in (("{method}", args.method), ("{shots}", args.shots), ("{seed}", args.seed)):
        if len(values) > 1 and field not in args.out:
            raise ConfigError(f"several --{field[1:-1]} values need '{field}' in --out "
                              "so that every cell gets its own run directory")
        if len(values) > 1 and field != "{method}" and args.manifest and field not in args.manifest:
            raise ConfigError(f"several --{field[1:-1]} values need '{field}' in --manifest (each cell has its own split)")
    if args.expect_hparams and len(args.expect_hparams) != len(cells):
        raise ConfigError(f"--expect-hparams has {len(args.expect_hparams)} digests for {len(cells)} cells")
    expected = args.expect_hparams or [None] * len(cells)
    overrides = parse_overrides(args.overrides, args.method)
    claim(args.device)  # before torch touches CUDA: one device of the lock-file pool (see fewclip.gpus)
    from .engine.run import RunSpec, run_cell, validate_spec

    def fill(template: str, m: str, k: int, s: int) -> str:
        return template.replace("{method}", m).replace("{shots}", str(k)).replace("{seed}", str(s))

    specs = []
    for (m, k, s), digest in zip(cells, expected):
        specs.append(RunSpec(
            data_root=args.data_root, dataset=args.dataset, method=m, backbone=args.backbone,
            backbone_key=args.backbone_key, pretrained=args.pretrained, out=fill(args.out, m, k, s), shots=k, seed=s,
            preset=args.preset, overrides=overrides[m], device=args.device, protocol=args.protocol,
            evals=args.evals, manifest=fill(args.manifest, m, k, s) if args.manifest else None,
            features=args.features, config_hash=args.config_hash, workers=args.workers, expect_hparams=digest,
        ))
    if len({sp.out for sp in specs}) < len(specs):
        raise ConfigError(f"--out {args.out} gives several cells the same run directory")
    for spec in specs:
        validate_spec(spec)
    for spec in specs:
        m = run_cell(spec)
        top1 = "n/a" if m["top1"] is None else f"{m['top1']:.2f}"
        print(f"{m['method']} {m['dataset']} {spec.shots}-shot seed {spec.seed}: top1 {top1}  → {spec.out}",
              flush=True)
    return 0


def cmd_generate(args) -> int:
    from .io import write_json

    out = Path(args.out)
    if args.kind == "fixtures":
        from .data.fixtures import write_all_fixtures

        write_all_fixtures(out, seed=args.seed)
    else:
        from .data.demo import write_demo_world

        write_demo_world(out, seed=args.seed)
    write_json(out / f".fewclip-{args.kind}.json", {"kind": args.kind, "seed": args.seed})
    return 0
