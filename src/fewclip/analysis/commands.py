"""`fewclip collect` and `fewclip report`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import FewclipError
from ..io import atomic_path, write_text


def register(subparsers) -> None:
    p = subparsers.add_parser("collect", help="gather every run's metrics.json into one table (parquet + CSV)")
    p.add_argument("--runs", default="results/runs", help="folder holding <protocol>/<backbone>/... run directories")
    p.add_argument("--config", help="grid config (YAML): list cells of the grid that have no metrics.json yet")
    p.add_argument("--out", default="results/all_runs.parquet", help="output table (.parquet; a .csv is written beside it)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when cells of the configured grid are missing")
    p.set_defaults(func=collect_cmd)

    p = subparsers.add_parser("report", help="tables, figures and statistics under reports/ from the collected table")
    p.add_argument("--table", default="results/all_runs.parquet", help="table written by `fewclip collect`")
    p.add_argument("--runs", default="results/runs", help="run directories (their predictions.parquet feed McNemar and bootstrap)")
    p.add_argument("--out", default="reports", help="output folder")
    p.add_argument("--config", help="grid config (YAML); its `baselines` list names the methods every method is tested against")
    p.add_argument("--baselines", nargs="+", help="methods every method is tested against (default: config's `baselines`, else zeroshot coop)")
    p.add_argument("--n-resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.set_defaults(func=report_cmd)


def _load_config(path: str | None) -> dict | None:
    if not path:
        return None
    import yaml

    cfg = Path(path)
    if not cfg.is_file():
        raise FewclipError(f"config not found: {cfg}")
    try:
        data = yaml.safe_load(cfg.read_text())
    except yaml.YAMLError as err:
        raise FewclipError(f"config {cfg} is not valid YAML: {err}") from err
    if not isinstance(data, dict) or "seeds" not in data:
        raise FewclipError(f"config {cfg} has no `seeds` key: pass the workflow's grid config")
    return data


def collect_cmd(args: argparse.Namespace) -> int:
    from .collect import check_consistency, collect_runs, missing_cells

    out = Path(args.out)
    if out.suffix != ".parquet":
        raise FewclipError(f"--out must end in .parquet (got {out}); a CSV is written beside it")
    df = collect_runs(args.runs)
    check_consistency(df)
    with atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)
    write_text(out.with_suffix(".csv"), df.to_csv(index=False))
    print(f"collected {len(df)} metrics files from {args.runs} → {out}")
    config = _load_config(args.config)
    if config is None:
        return 0
    missing = missing_cells(config, args.runs)
    write_text(out.parent / "missing.csv", missing.to_csv(index=False))
    if missing.empty:
        print("every cell of the configured grid is finished")
        return 0
    counts = missing["status"].value_counts().to_dict()
    print(f"{len(missing)} metrics files of the configured grid are missing ({counts}); see {out.parent / 'missing.csv'}:",
          file=sys.stderr)
    for path in missing["path"].head(20):
        print(f"  {path}", file=sys.stderr)
    if len(missing) > 20:
        print(f"  … and {len(missing) - 20} more", file=sys.stderr)
    return 1 if args.strict else 0


def report_cmd(args: argparse.Namespace) -> int:
    from .collect import load_table
    from .report import DEFAULT_BASELINES, build_report

    table = load_table(args.table)
    if table.empty:
        raise FewclipError(f"{args.table} holds no runs; run the grid (or `fewclip collect` on the right --runs) first")
    config = _load_config(args.config)
    baselines = args.baselines or (config or {}).get("baselines", DEFAULT_BASELINES)
    runs = Path(args.runs) if args.runs and Path(args.runs).is_dir() else None
    written = build_report(table, runs, Path(args.out), baselines=baselines, n_resamples=args.n_resamples)
    print(f"wrote {len(written)} files under {args.out}/ (index: {Path(args.out) / 'README.md'})")
    return 0
