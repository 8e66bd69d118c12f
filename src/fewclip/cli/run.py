"""The run verbs: `methods` lists the registered methods, `run` runs grid cells."""

from __future__ import annotations

import json
import sys

from ..constants import PRESETS, PROTOCOLS
from ..errors import ConfigError
from ..paths import check_name
from .args import backbone_args, count_type, seed_type, shots_type


def register(sub) -> None:
    p = sub.add_parser("methods", help="list the registered methods")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("run", help="run one grid cell (fit + evaluate) into a run directory")
    backbone_args(p)
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--method", nargs="+", required=True,
                   help="method(s); several values run their cells in one process (--out must then contain {method}). "
                        "A method whose result depends on neither K nor the seed (its class declares "
                        "uses_fewshot_sample = False) runs one cell: the first --shots and the first --seed")
    p.add_argument("--shots", type=shots_type, nargs="+", required=True,
                   help="K; several values run several cells in one process (--out must then contain {shots})")
    p.add_argument("--seed", type=seed_type, nargs="+", required=True,
                   help="seed(s); several values need {seed} in --out (and in --manifest)")
    p.add_argument("--out", required=True, help="run directory; may contain {method}, {shots} and {seed}")
    p.add_argument("--preset", default="clean", choices=PRESETS)
    p.add_argument("--protocol", default="fewshot", choices=PROTOCOLS)
    p.add_argument("--eval", dest="evals", nargs="*", default=[],
                   help="DG target datasets (--protocol dg), scored over the source's classes")
    p.add_argument("--cross-dataset", dest="cross_dataset", nargs="*", default=[],
                   help="cross-dataset targets (--protocol dg): other datasets, each scored with its own class "
                        "names by the same model (class-specific heads report n/a)")
    p.add_argument("--manifest", help="few-shot manifest (from `fewclip split`); sampled here if absent")
    p.add_argument("--features", help="feature-store root (default results/features)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="override a hyper-parameter (repeatable), e.g. --set epochs=1 for every --method, "
                        "--set coop.epochs=1 for one of them")
    p.add_argument("--expect-hparams", nargs="+", default=[], metavar="SHA256",
                   help="the workflow's planned hyper-parameter digest per cell (`fewclip plan`), in the order "
                        "the cells run (method, then shots, then seed; one cell for a method whose result depends on "
                        "neither); a cell that would resolve other values is refused")
    p.add_argument("--workers", type=count_type, default=0)
    p.set_defaults(func=cmd_run)


def cmd_methods(args) -> int:
    from ..methods import load_all

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


def parse_overrides(pairs: list[str], methods: list[str]) -> dict[str, dict]:
    """`--set` pairs per method: `KEY=VALUE` applies to every method of the run, `METHOD.KEY=VALUE`
    to that one (it wins over an unscoped KEY)."""
    from ..plan import parse_key_values

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
    start-up. Every cell is validated before the first one starts (a bad cell leaves nothing).
    A method whose class declares `uses_fewshot_sample = False` runs only its canonical cell, the
    first --shots and the first --seed (the workflow lists them in the config's order, so that is
    the cell the planner planned): its result stands for every K and seed."""
    from ..gpus import claim
    from ..grid import method_cells
    from ..methods import get_method  # the registry (torch), not CUDA: claim() still comes first

    if len(set(args.method)) < len(args.method):
        raise ConfigError(f"--method {' '.join(args.method)} names a method twice")
    for m in args.method:  # a method names a folder of the run paths (--out {method}, the workflow)
        check_name("method", m, "--method")
    if args.backbone_key is None:  # then the model name names the feature store's folder
        check_name("backbone key", args.backbone, "--backbone (no --backbone-key given: the model name is the key; "
                   "pass --backbone-key NAME)")
    sample_free = {m for m in args.method if not get_method(m).uses_fewshot_sample}
    cells = method_cells(args.method, args.shots, args.seed, sample_free)
    if sample_free and len(args.shots) * len(args.seed) > 1:
        print(f"fewclip run: {', '.join(sorted(sample_free))}: one cell ({args.shots[0]}-shot, seed {args.seed[0]}) "
              "stands for every --shots and --seed (the result depends on neither: uses_fewshot_sample = False)",
              file=sys.stderr, flush=True)
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
    from ..engine.run import RunSpec, run_cell, validate_spec

    def fill(template: str, m: str, k: int, s: int) -> str:
        return template.replace("{method}", m).replace("{shots}", str(k)).replace("{seed}", str(s))

    specs = []
    for (m, k, s), digest in zip(cells, expected):
        specs.append(RunSpec(
            data_root=args.data_root, dataset=args.dataset, method=m, backbone=args.backbone,
            backbone_key=args.backbone_key, pretrained=args.pretrained, out=fill(args.out, m, k, s), shots=k, seed=s,
            preset=args.preset, overrides=overrides[m], device=args.device, protocol=args.protocol,
            evals=args.evals, cross_dataset=args.cross_dataset,
            manifest=fill(args.manifest, m, k, s) if args.manifest else None,
            features=args.features, workers=args.workers, expect_hparams=digest,
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
