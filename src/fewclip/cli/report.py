"""The report verbs: `collect` gathers the runs into one table, `report` writes reports/ from it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError, FewclipError
from ..io import atomic_path, write_text
from .args import resamples_type


def register(subparsers) -> None:
    p = subparsers.add_parser("collect", help="gather every run's metrics.json into one table (parquet + CSV)")
    p.add_argument("--runs", default="results/runs", help="folder holding <protocol>/<backbone>/... run directories")
    p.add_argument("--config", help="grid config (YAML): list cells of the grid that have no metrics.json yet "
                                    "(and place results that depend on neither K nor the seed at its cells too)")
    p.add_argument("--out", default="results/all_runs.parquet", help="output table (.parquet; a .csv is written beside it)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when cells of the configured grid are missing")
    p.add_argument("--allow-empty", action="store_true",
                   help="write the table even when no finished run is found (default: refuse, keep the old table)")
    p.set_defaults(func=cmd_collect)

    p = subparsers.add_parser("report", help="tables, figures and statistics under reports/ from the collected table")
    p.add_argument("--table", default="results/all_runs.parquet", help="table written by `fewclip collect`")
    p.add_argument("--runs", default="results/runs", help="run directories (their predictions.parquet feed McNemar and bootstrap)")
    p.add_argument("--out", default="reports", help="output folder")
    p.add_argument("--config", help="grid config (YAML); its `baselines` list names the methods every method is tested against")
    p.add_argument("--baselines", nargs="+", help="methods every method is tested against (default: config's `baselines`, else zeroshot coop)")
    p.add_argument("--n-resamples", type=resamples_type, default=2000, help="bootstrap resamples (default 2000)")
    p.set_defaults(func=cmd_report)


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
    _check_grid_keys(data, cfg)
    return data


GRID_KEYS = ("seeds", "protocols")  # what `fewclip collect` and `fewclip report` read of a config (fewclip.grid)


def _check_grid_keys(data: dict, cfg: Path) -> None:
    """The keys that shape the grid, checked against the workflow's schema as the workflow checks
    them (the other keys, which only the workflow reads, may be left out)."""
    import jsonschema
    import yaml

    from ..plan import SCHEMA

    schema = yaml.safe_load(SCHEMA.read_text())
    part = {"type": "object", "required": list(GRID_KEYS), "$defs": schema.get("$defs", {}),
            "properties": {k: schema["properties"][k] for k in GRID_KEYS}}
    errors = sorted(jsonschema.Draft202012Validator(part).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"config {cfg}: key {where}: {err.message}; write it as the workflow's schema says "
                          f"(workflow/schemas/{SCHEMA.name}; `fewclip plan --configfile {cfg}` checks a whole config)")


def cmd_collect(args: argparse.Namespace) -> int:
    from ..analysis.collect import (check_consistency, collect_runs, machine_warnings, missing_cells, sample_free,
                                    scan_metrics)

    out = Path(args.out)
    if out.suffix != ".parquet":
        raise FewclipError(f"--out must end in .parquet (got {out}); a CSV is written beside it")
    if out.is_dir():
        raise FewclipError(f"--out {out} is a folder; pass the path of the .parquet table to write")
    config = _load_config(args.config)
    df = collect_runs(args.runs, config)
    for path, why in scan_metrics(args.runs)[1]:
        print(f"fewclip collect: skipped {path}: {why}", file=sys.stderr)
    if df.empty and not args.allow_empty:
        kept = f"; the existing {out} is kept" if out.exists() else ""
        raise FewclipError(f"no finished runs under {args.runs} (no <protocol>/<backbone>/<dataset>/<method>/"
                           f"<K>shot/seed<S>/metrics.json){kept}. Check --runs, or pass --allow-empty to write "
                           "an empty table")
    check_consistency(df)
    for line in machine_warnings(df):
        print(f"fewclip collect: warning: {line}", file=sys.stderr)
    with atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)
    write_text(out.with_suffix(".csv"), df.to_csv(index=False))
    copies = int(df["replica"].sum()) if "replica" in df else 0
    print(f"collected {len(df) - copies} metrics files from {args.runs} → {out}"
          + (f" (+ {copies} rows placing results that depend on neither K nor the seed at the other cells' "
             "K and seed)" if copies else ""))
    if config is None:
        return 0
    missing = missing_cells(config, args.runs, sample_free(config, df))
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


def cmd_report(args: argparse.Namespace) -> int:
    from ..analysis.collect import load_table
    from ..analysis.report import DEFAULT_BASELINES, build_report

    table = load_table(args.table)
    if table.empty:
        raise FewclipError(f"{args.table} holds no runs; run the grid (or `fewclip collect` on the right --runs) first")
    config = _load_config(args.config)
    baselines = args.baselines or (config or {}).get("baselines", DEFAULT_BASELINES)
    runs = Path(args.runs) if args.runs and Path(args.runs).is_dir() else None
    try:  # build_report reads every predictions.parquet before it writes anything under --out
        written = build_report(table, runs, Path(args.out), baselines=baselines, n_resamples=args.n_resamples)
    except (ValueError, OSError) as err:  # a corrupt predictions.parquet (pyarrow's ArrowInvalid is a ValueError)
        bad = _unreadable_predictions(table, runs) if runs is not None else None
        if bad is None:
            raise
        raise FewclipError(f"{bad[0]} cannot be read ({bad[1]}): it is truncated or not a parquet file. Delete "
                           "its run directory and rerun that cell, then `fewclip collect` and `fewclip report`") from err
    print(f"wrote {len(written)} files under {args.out}/ (index: {Path(args.out) / 'README.md'})")
    return 0


def _unreadable_predictions(table, runs: Path):
    """(path, why) of the first predictions.parquet named by the table that pyarrow cannot open."""
    import pyarrow.parquet as pq

    if "metrics_dir" not in table:
        return None
    for rel in table["metrics_dir"].dropna().unique():
        path = runs / rel / "predictions.parquet"
        if not path.is_file():
            continue
        try:
            pq.read_metadata(path)
        except Exception as err:  # noqa: BLE001 - any failure to open it is the answer
            return path, (str(err).splitlines() or [type(err).__name__])[0][:160]
    return None
