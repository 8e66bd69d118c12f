"""Run directories → one tidy table (one row per metrics.json), missing cells, consistency checks.

A result that stands for several cells (metrics.json `shared_across`: a method whose class declares
`uses_fewshot_sample = False` runs one cell per protocol, backbone and dataset) is also placed at
every (shots, seed) of the other methods' cells, and of the config's grid when one is given: the
same rows the report would read from one run per (shots, seed), each marked `replica` and
pointing (`run_dir`, `metrics_dir`) at the one run, whose predictions every test then reads."""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

import pandas as pd

from .. import paths
from ..constants import SHARED_ACROSS
from ..errors import FewclipError
from ..grid import expand_grid

# Run directory layout (paths.RUN_DIR below paths.RUNS): {protocol}/{backbone}/{dataset}/{method}/{K}shot/seed{S}
CELL_GLOB = os.path.join("*", "*", "*", "*", "*shot", "seed*")
NESTED = ("hparams", "selected", "provenance")
# Fields that must agree inside one table (protocol, backbone_key, shots): a table mixing them
# would compare numbers that were not produced under the same conditions.
TABLE_INVARIANTS = ("preset", "backbone", "pretrained")


SHOT_DIR, SEED_DIR = re.compile(r"^\d+shot$"), re.compile(r"^seed\d+$")


def find_metrics(runs: str | os.PathLike) -> list[Path]:
    """Every finished metrics.json below `runs` (cell level and eval_* level), sorted."""
    return scan_metrics(runs)[0]


def scan_metrics(runs: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(the finished metrics.json files, [(path, why skipped)]). Skipped, with their path:
    folders whose names do not follow the layout (`seed1_old`, `4shot.bak`) and the eval_*
    results of a cell that has no metrics.json of its own (an unfinished or failed cell)."""
    root = str(runs)
    any_cell = os.path.join(*["*"] * 6)  # CELL_GLOB's depth, any names: strays are found to be named
    cells = glob.glob(os.path.join(glob.escape(root), any_cell, "metrics.json"))
    evals = glob.glob(os.path.join(glob.escape(root), any_cell, "eval_*", "metrics.json"))
    keep, skipped = [], []
    for p in sorted(Path(p) for p in cells + evals):
        cell = p.parent.parent if p.parent.name.startswith("eval_") else p.parent
        if not (SHOT_DIR.match(cell.parent.name) and SEED_DIR.match(cell.name)):
            skipped.append((p, f"'{cell.parent.name}/{cell.name}' is not a run directory name (<K>shot/seed<S>)"))
        elif cell != p.parent and not (cell / "metrics.json").is_file():
            skipped.append((p, f"its cell {cell} has no metrics.json (unfinished or failed)"))
        elif p.is_file() or p.is_symlink():
            keep.append(p)
        else:
            skipped.append((p, "a folder, not a file"))
    return keep, skipped


class BadMetrics(FewclipError):
    """A metrics.json in a run directory's place that is not a readable result."""


class MisplacedMetrics(BadMetrics):
    """A metrics.json that records another cell (or evaluation) than the folder it lies in."""


def _check_place(path: Path, metrics: dict, place: dict, target: str | None) -> None:
    """A result is counted where it lies only: every cell field `metrics` records must be its
    folder's, and so must the evaluation (`eval_dataset`: the cell's dataset in the cell's folder,
    the target's in `eval_{target}`, the cell's in base-to-new's `eval_new`). Fields a
    metrics.json leaves out are not compared."""
    want = dict(place)
    if target is None or target == "new":
        want["eval_dataset"] = place["dataset"]
    else:
        want["eval_dataset"] = target
    if target == "new":
        want["eval_split"] = "new"
    recorded = {k: metrics[k] for k in want if k in metrics}
    if all(str(v) == str(want[k]) for k, v in recorded.items()):
        return
    where = "folder" if target is None else f"folder (evaluation {target})"

    def text(d):
        return ", ".join(f"{k}={d[k]}" for k in want if k in d)

    raise MisplacedMetrics(f"{path} records {text(recorded)}, but its {where} is {text(want)}")


def _row(path: Path, runs: Path) -> dict:
    try:
        metrics = json.loads(path.read_text())
    except UnicodeDecodeError as err:
        raise BadMetrics(f"{path}: binary content, not JSON (byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise BadMetrics(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    except OSError as err:
        raise BadMetrics(f"{path}: cannot be read ({err.strerror or err})") from err
    if not isinstance(metrics, dict):
        raise BadMetrics(f"{path}: a JSON {type(metrics).__name__}, not an object")
    if "top1" not in metrics:
        raise BadMetrics(f"{path}: no 'top1' (not a metrics.json fewclip wrote)")
    rel = path.parent.relative_to(runs)
    is_eval = rel.name.startswith("eval_")
    cell = rel.parent if is_eval else rel
    protocol, backbone_key, dataset, method, shots, seed = cell.parts
    row = {
        "protocol": protocol,
        "backbone_key": backbone_key,
        "dataset": dataset,
        "method": method,
        "shots": int(shots.removesuffix("shot")),
        "seed": int(seed.removeprefix("seed")),
    }
    _check_place(path, metrics, row, rel.name.removeprefix("eval_") if is_eval else None)
    for key, value in metrics.items():
        if key in NESTED and isinstance(value, dict):
            for sub, subval in value.items():
                row[f"{key}.{sub}"] = subval
        else:
            row[key] = value
    row["eval"] = rel.name.removeprefix("eval_") if is_eval else None
    row["is_cell"] = not is_eval
    row["run_dir"] = cell.as_posix()
    row["metrics_dir"] = rel.as_posix()
    row["has_predictions"] = (path.parent / "predictions.parquet").is_file()
    return row


def collect_runs(runs: str | os.PathLike, config: dict | None = None) -> pd.DataFrame:
    """One row per metrics.json below `runs`; hparams/provenance flattened as `hparams.x`, `provenance.x`.
    A result that stands for several cells (`shared_across`) gets a row at each of them
    (`share_results`; `config`: the grid, whose cells count too)."""
    runs = Path(runs)
    if not runs.is_dir():
        raise FewclipError(f"runs directory not found: {runs}; pass --runs the folder that holds <protocol>/ run trees")
    rows, bad, misplaced = [], [], []
    for p in find_metrics(runs):
        try:
            rows.append(_row(p, runs))
        except MisplacedMetrics as err:
            misplaced.append(str(err))
        except BadMetrics as err:
            bad.append(str(err))
    if misplaced and not bad:
        raise FewclipError(
            f"{len(misplaced)} metrics.json file(s) under {runs} record another run than the folder they lie in "
            "(copied or moved), so no table was written (the previous one is kept): " + "; ".join(misplaced[:10])
            + (f"; … and {len(misplaced) - 10} more" if len(misplaced) > 10 else "")
            + ". A result counts only in its own run directory: move each back to the folder of the run it "
            "records, or delete it and rerun that folder's cell")
    bad += misplaced
    if bad:
        raise FewclipError(
            f"{len(bad)} metrics.json file(s) under {runs} are not readable results, so no table was written "
            "(the previous one is kept): " + "; ".join(bad[:10]) + (f"; … and {len(bad) - 10} more" if len(bad) > 10
                                                                    else "")
            + ". Delete those run directories and rerun their cells (or move them out of --runs)")
    df = pd.DataFrame(share_results(rows, config))
    if df.empty:
        return df
    if "eval_split" not in df:
        df["eval_split"] = "test"
    df["eval_split"] = df["eval_split"].fillna("test")
    if "eval_dataset" not in df:
        df["eval_dataset"] = df["dataset"]
    df["eval_dataset"] = df["eval_dataset"].fillna(df["dataset"])
    if "top1" in df:
        df["top1"] = pd.to_numeric(df["top1"], errors="coerce")
    if SHARED_ACROSS in df:  # '["shots", "seed"]' where a run says so, else empty
        df[SHARED_ACROSS] = [json.dumps(v) if isinstance(v, list) else None for v in df[SHARED_ACROSS]]
    return _parquet_safe(df)


def _shared_fields(row: dict) -> set[str]:
    """The cell fields (`shots`, `seed`) a row's result does not depend on (metrics.json `shared_across`)."""
    value = row.get(SHARED_ACROSS)
    return {f for f in ("shots", "seed") if isinstance(value, list) and f in value}


def share_results(rows: list[dict], config: dict | None = None) -> list[dict]:
    """`rows` (each `replica: False`), and a copy of every row whose result stands for several cells
    at each (shots, seed) of its (protocol, backbone_key, dataset) where another method has a
    finished cell, or the config's grid has a cell, and no run of its own lies (`replica: True`).

    A copy keeps everything but its shots and seed, so `run_dir` and `metrics_dir` name the one
    run (the tests read its predictions once); its `provenance.manifest_sha256` is empty, since
    the run read no sample of that cell. The rows come in the order of their (for a copy: virtual)
    metrics.json paths, the order one run per cell gives."""
    for r in rows:
        r["replica"] = False
    shared = [r for r in rows if _shared_fields(r)]
    if not shared:
        return rows

    def group(r):
        return r["protocol"], r["backbone_key"], r["dataset"]

    places: dict[tuple, set] = {}
    for r in rows:
        if r["is_cell"] and not _shared_fields(r):
            places.setdefault(group(r), set()).add((int(r["shots"]), int(r["seed"])))
    for c in expand_grid(config) if config else ():
        places.setdefault((c.protocol, c.backbone, c.dataset), set()).add((c.shots, c.seed))
    have = {(*group(r), r["method"], r["eval"], int(r["shots"]), int(r["seed"])) for r in rows}
    out = list(rows)
    for r in shared:
        kept = {"shots", "seed"} - _shared_fields(r)
        for shots, seed in sorted(places.get(group(r), ())):
            place = {"shots": shots, "seed": seed}
            key = (*group(r), r["method"], r["eval"], shots, seed)
            if key in have or any(place[f] != int(r[f]) for f in kept):
                continue
            have.add(key)
            copy = {**r, "shots": shots, "seed": seed, "replica": True}
            if "provenance.manifest_sha256" in copy:
                copy["provenance.manifest_sha256"] = None
            out.append(copy)
    return sorted(out, key=_path_parts)


def _path_parts(row: dict) -> tuple[str, ...]:
    """The parts of the metrics.json path a row stands for, a copy's at its own (shots, seed):
    sorted, they give find_metrics's order."""
    parts = Path(row["metrics_dir"]).parts
    if row["replica"]:
        n = len(Path(row["run_dir"]).parts)
        parts = (*parts[:n - 2], f"{row['shots']}shot", f"seed{row['seed']}", *parts[n:])
    return (*parts, "metrics.json")


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Columns holding dicts/lists or mixed types become JSON strings (parquet needs one type per column)."""
    for col in df.columns:
        if df[col].dtype != object:
            continue
        kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and pd.isna(v))}
        if len(kinds) > 1 or kinds & {dict, list, tuple}:
            df[col] = [None if v is None else json.dumps(v, sort_keys=True) for v in df[col]]
    return df


def check_consistency(df: pd.DataFrame) -> None:
    """Refuse tables that mix presets/backbones/weights, or methods trained on different support sets."""
    if df.empty:
        return
    for field in TABLE_INVARIANTS:
        if field in df:
            _refuse_mixed(df, ["protocol", "backbone_key", "shots"], field)
    if "provenance.manifest_sha256" in df:
        cells = df[df["is_cell"] & df["provenance.manifest_sha256"].notna()]
        _refuse_mixed(cells, ["protocol", "dataset", "shots", "seed"], "provenance.manifest_sha256")


def _refuse_mixed(df: pd.DataFrame, keys: list[str], field: str) -> None:
    sub = df[df[field].notna()]
    counts = sub.groupby(keys)[field].nunique()
    bad = counts[counts > 1]
    if bad.empty:
        return
    group = bad.index[0]
    mask = (sub[keys] == pd.Series(group, index=keys)).all(axis=1)
    examples = []
    for value, rows in sub[mask].groupby(field):
        dirs = ", ".join(rows["metrics_dir"].head(3))
        examples.append(f"{field}={value!r} in {dirs}")
    where = ", ".join(f"{k}={v}" for k, v in zip(keys, group))
    raise FewclipError(
        f"runs of one table differ in {field} ({where}): " + "; ".join(examples)
        + f". Rerun the odd cells with the same {field}, or move them to another results folder"
    )


def sample_free(config: dict, df: pd.DataFrame) -> set[str]:
    """The grid's methods whose result depends on neither K nor the seed (`uses_fewshot_sample =
    False`): as their finished runs record it (metrics.json `shared_across`, written from the class),
    read without importing the method registry; only a method of the grid with no finished run at
    all is looked up in the registry (which imports torch)."""
    grid = {c.method for c in expand_grid(config)}
    ran = set(df["method"]) if "method" in df else set()
    out = set(df.loc[df[SHARED_ACROSS].notna(), "method"]) if SHARED_ACROSS in df else set()
    if grid - ran:
        from ..grid import sample_free_methods

        out |= (grid - ran) & sample_free_methods()
    return out


def missing_cells(config: dict, runs: str | os.PathLike, sample_free=()) -> pd.DataFrame:
    """The grid's metrics.json files that do not exist yet: 'unfinished' if the run dir exists, else 'not run'.
    `sample_free`: the methods the grid runs once per (protocol, backbone, dataset) (the function
    `sample_free` names them, the planner passes the same to `expand_grid`): only that cell of
    theirs is expected."""
    runs = Path(runs)
    rows = []
    for cell in expand_grid(config, sample_free):
        cell_dir = runs / Path(cell.run_dir).relative_to(paths.RUNS)
        targets = [(None, cell_dir)] + [(t, cell_dir / f"eval_{t}") for t in cell.evals]
        for target, folder in targets:
            if (folder / "metrics.json").is_file():
                continue
            rows.append(
                {
                    "protocol": cell.protocol,
                    "backbone_key": cell.backbone,
                    "dataset": cell.dataset,
                    "method": cell.method,
                    "shots": cell.shots,
                    "seed": cell.seed,
                    "eval": target,
                    "status": "unfinished" if folder.is_dir() else "not run",
                    "path": (folder / "metrics.json").as_posix(),
                }
            )
    columns = ["protocol", "backbone_key", "dataset", "method", "shots", "seed", "eval", "status", "path"]
    return pd.DataFrame(rows, columns=columns)


def machine_warnings(df: pd.DataFrame) -> list[str]:
    """One line per table (protocol, backbone, shots) whose runs come from different machines
    (CPU model/BLAS or GPU): their floating-point kernels differ, so numbers can differ slightly."""
    cols = [c for c in ("provenance.cpu", "provenance.blas", "provenance.device") if c in df]
    if df.empty or not cols:
        return []
    sub = df[df["is_cell"]] if "is_cell" in df else df
    machine = sub[cols].astype(str).agg(" / ".join, axis=1)
    out = []
    for key, group in machine.groupby([sub["protocol"], sub["backbone_key"], sub["shots"]]):
        kinds = group.unique()
        if len(kinds) > 1:
            examples = "; ".join(f"{k} ({sub.loc[group[group == k].index[0], 'run_dir']})" for k in kinds[:3])
            out.append(f"runs of the table protocol={key[0]}, backbone={key[1]}, shots={key[2]} come from "
                       f"{len(kinds)} different machines ({', '.join(cols)}): {examples}. Results are "
                       "byte-identical only on the same machine type; numbers may differ slightly")
    return out


def load_table(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if path.is_dir():
        raise FewclipError(f"collected table {path} is a folder; pass the .parquet file `fewclip collect` wrote")
    if not path.is_file():
        raise FewclipError(f"collected table not found: {path}; run `fewclip collect` first")
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise FewclipError(f"collected table {path} cannot be read (truncated or not a "
                           f"{path.suffix.lstrip('.') or 'table'} file: {str(err).splitlines()[0][:160] if str(err) else type(err).__name__}); "
                           "rerun `fewclip collect` to write it again") from err
