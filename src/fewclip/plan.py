"""What a workflow config will run: every cell with its fully resolved hyper-parameters.

The Snakefile and `fewclip plan` read a config the same way (`read_config`: the `--configfile`
files, or the embedded demo's `config/config.yaml` when none is given, then `--config`
overrides), validate it (`check_config`: backbone keys as folder names, no brace in a data path,
the JSON schema, backbone model names, method names, `method_params` keys and values) and expand
it (`plan`). Each planned cell carries the dict that `resolve_hparams` returns for it, the same
dict `fewclip run` records under `hparams` in metrics.json (a method whose result depends on
neither K nor the seed, `uses_fewshot_sample = False`, is planned once per protocol, backbone and
dataset); the workflow passes its digest to every job (`--expect-hparams`), and a run that would
resolve anything else stops before it starts.

Needs the method registry (torch), never open_clip, a model or data.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .grid import Cell, expand_grid, sample_free_methods
from .paths import check_name

DEMO_CONFIG = "config/config.yaml"  # the embedded demo: used only when no --configfile is given
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


@dataclass(frozen=True)
class PlannedCell:
    cell: Cell
    pretrained: str
    model: str
    preset: str
    hparams: dict
    views: int = 0  # the stored augmented views the cell reads (its method's data_needs().views)

    @property
    def hparams_sha(self) -> str:
        return hparams_digest(self.hparams)

    def as_dict(self) -> dict:
        c = self.cell
        return {"protocol": c.protocol, "backbone": c.backbone, "model": self.model, "pretrained": self.pretrained,
                "dataset": c.dataset, "method": c.method, "shots": c.shots, "seed": c.seed,
                "evals": list(c.evals), "cross_dataset": list(c.cross_dataset), "preset": self.preset,
                "hparams": self.hparams}


def hparams_digest(hp: dict) -> str:
    from .io import sha256_json

    return sha256_json(hp)


# ------------------------------------------------------------------------------- reading


def merge(base: dict, update: dict) -> dict:
    """Snakemake's config merge: nested dicts merged key by key, everything else replaced."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_key_values(pairs: list[str], flag: str = "--config") -> dict:
    """`KEY=VALUE` pairs with YAML values (`--config` as Snakemake reads them, `fewclip run --set`).
    `1e-3`, a string to YAML 1.1, becomes a float where the setting is one (resolve_hparams)."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got '{pair}'")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"{flag} {pair}: value is not valid YAML ({err})") from err
    return out


def read_config(configfiles: list[str] | None = None, overrides: dict | None = None, workdir: str = ".") -> dict:
    """The config a workflow run uses: the given files merged in order, or the demo's
    config/config.yaml when there are none; then the `--config` overrides."""
    files = list(configfiles or []) or [str(Path(workdir) / DEMO_CONFIG)]
    config: dict = {}
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found; pass an existing file to --configfile")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(loaded).__name__}")
        config = merge(config, loaded)
    return merge(config, overrides or {})


# ------------------------------------------------------------------------------- validating


# Keys a config may no longer set, and what to do instead: the schema alone would only say
# "Additional properties are not allowed".
RETIRED_KEYS = {
    "image_methods": "drop it; a method's class declares needs (`needs = \"images\"`: it trains through the "
                     "image encoder, on `device`, with a GPU), and the workflow reads that from the method "
                     "registry (`fewclip methods` lists each method's needs)",
}


def check_retired_keys(config: dict) -> None:
    """Stop on a key that fewclip no longer reads, saying what replaced it (`fewclip plan` and the
    Snakefile call this before the schema)."""
    for key, fix in RETIRED_KEYS.items():
        if key in config:
            raise ConfigError(f"config key {key}: no longer read (set in a --configfile or --config); {fix}")


def validate_schema(config: dict) -> dict:
    """JSON-schema validation with the schema's defaults filled in (as snakemake.utils.validate)."""
    import jsonschema

    check_retired_keys(config)

    schema = yaml.safe_load(SCHEMA.read_text())
    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    validator_cls = jsonschema.validators.extend(base, {"properties": set_defaults})
    config = copy.deepcopy(config)
    errors = sorted(validator_cls(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"config key {where}: {err.message}")
    return config


def known_models() -> set[str]:
    """open_clip's model names and fewclip's, read from their model_configs folders (no import)."""
    from .models.towers import config_folders

    return {p.stem for folder in config_folders() for p in folder.glob("*.json")}


def check_config(config: dict) -> dict:
    """Everything a run would trip on, before any job: schema, backbones, methods, method_params."""
    check_paths(config)
    config = validate_schema(config)
    models = known_models()
    for key, bb in config["backbones"].items():
        if bb["model"] not in models:
            close = sorted(m for m in models if m.lower().startswith(bb["model"][:3].lower()))[:8]
            raise ConfigError(f"config key backbones.{key}.model: unknown open_clip model '{bb['model']}'"
                              + (f" (similar: {', '.join(close)})" if close else ""))
    registered = _registry()
    for protocol, p in config["protocols"].items():
        for i, run in enumerate(p.get("runs", [])):
            if run["backbone"] not in config["backbones"]:
                raise ConfigError(
                    f"config key protocols.{protocol}.runs[{i}].backbone: '{run['backbone']}' is not defined "
                    f"under `backbones` (allowed: {', '.join(sorted(config['backbones']))})")
            for m in run["methods"]:
                if m not in registered:
                    raise ConfigError(
                        f"config key protocols.{protocol}.runs[{i}].methods: unknown method '{m}'; registered: "
                        f"{', '.join(sorted(registered))} (a method of your own is registered by naming its file "
                        "in FEWCLIP_PLUGINS)")
            if "shots" in run:
                _check_run_shots(protocol, p, i, run, registered)
    for m in config.get("method_params", {}):
        if m not in registered:
            raise ConfigError(f"config key method_params.{m}: unknown method '{m}'; registered: "
                              f"{', '.join(sorted(registered))}")
    _check_dg_targets(config["protocols"].get("dg"))
    return config


def _check_run_shots(protocol: str, p: dict, i: int, run: dict, registered: dict) -> None:
    """A run's own `shots`: few-shot runs only, some of the protocol's K, no method that reads no
    few-shot sample (it runs once, at the protocol's first K)."""
    key = f"config key protocols.{protocol}.runs[{i}].shots"
    if protocol != "fewshot":
        raise ConfigError(f"{key}: only few-shot runs choose their own K (protocol {protocol} has one `shots` "
                          "for every run)")
    other = [k for k in run["shots"] if k not in p["shots"]]
    if other:
        raise ConfigError(f"{key}: {other} not in protocols.fewshot.shots {p['shots']} (a run picks some of "
                          "the protocol's K)")
    free = [m for m in run["methods"] if not registered[m].uses_fewshot_sample]
    if free:
        raise ConfigError(f"{key}: {', '.join(free)} reads no few-shot sample and runs once, at the protocol's "
                          "first K: list it in a run without `shots`")


def check_paths(config: dict) -> None:
    """The values that become paths, before the schema (whose pattern would only say "does not
    match"): every backbone key is one folder name (`paths.check_name`, the rule `fewclip run
    --backbone-key` follows), and no path that Snakemake parses holds a brace."""
    backbones = config.get("backbones")
    if isinstance(backbones, dict):
        for key in backbones:
            check_name("backbone key", key, "config key backbones")
    for key in ("data_root", "download_sources"):
        value = config.get(key)
        if isinstance(value, str) and ("{" in value or "}" in value):
            raise ConfigError(
                f"config key {key}: {value!r} contains '{{' or '}}', which Snakemake reads as a wildcard in "
                f"every path made from it; rename the folder (or link it under a name without braces) and set "
                f"{key} to that")


def _check_dg_targets(dg: dict | None) -> None:
    """The dg entry's targets: at least one, each named once, none the source; a DG target shares
    the source's classes, a cross-dataset target has its own."""
    if not dg:
        return
    targets, cross = dg.get("targets") or [], dg.get("cross_dataset") or []
    if not targets and not cross:
        raise ConfigError("config key protocols.dg: no targets; list the source's shifted variants under "
                          "`targets` (domain generalization) and/or other datasets under `cross_dataset` "
                          "(cross-dataset transfer)")
    for t in cross:
        if t == dg["source"]:
            raise ConfigError(f"config key protocols.dg.cross_dataset: {t} is the source the model trains on; "
                              "list other datasets")
        if t in targets:
            raise ConfigError(f"config key protocols.dg.cross_dataset: {t} is also under protocols.dg.targets; a "
                              "target is either DG (`targets`: the source's classes) or cross-dataset "
                              "(`cross_dataset`: its own classes)")
        if cross.count(t) > 1:
            raise ConfigError(f"config key protocols.dg.cross_dataset: {t} is listed twice")


def _registry() -> dict:
    """The registered methods (fewclip's and the user's FEWCLIP_PLUGINS)."""
    from .methods import load_all

    return load_all()


# ------------------------------------------------------------------------------- planning


def plan(config: dict) -> list[PlannedCell]:
    """Every cell of a checked config, with the hyper-parameters its run will use. A method whose
    class declares `uses_fewshot_sample = False` has one cell per (protocol, backbone, dataset),
    at the protocol's first K and the config's first seed (`grid.canonical_cell`)."""
    from .methods import get_method, resolve_hparams

    params = config.get("method_params", {})
    out = []
    resolved: dict[tuple, dict] = {}
    views: dict[tuple, int] = {}
    for cell in expand_grid(config, sample_free_methods()):
        key = (cell.method, cell.dataset, cell.shots, cell.protocol)
        if key not in resolved:
            cls = get_method(cell.method)
            try:
                resolved[key] = resolve_hparams(cls, cell.dataset, cell.shots, config["preset"],
                                                params.get(cell.method, {}), cell.protocol)
            except ConfigError as err:
                raise ConfigError(f"config key method_params.{cell.method}: {err}") from err
            views[key] = int(cls(resolved[key]).data_needs().views)
            if views[key] > config["views"]:
                raise ConfigError(
                    f"config key views: the feature store holds {config['views']} augmented views per image, "
                    f"{cell.method} reads {views[key]} (its hyper-parameter views); raise `views` to "
                    f"{views[key]} or set method_params.{cell.method}.views")
        bb = config["backbones"][cell.backbone]
        problem = get_method(cell.method).tower_problem(bb["model"])
        if problem:
            raise ConfigError(f"config key protocols.{cell.protocol}.runs (backbone {cell.backbone}, method "
                              f"{cell.method}): {problem}")
        out.append(PlannedCell(cell, bb["pretrained"], bb["model"], config["preset"], resolved[key], views[key]))
    for m, overrides in params.items():  # settings of a method outside the grid are still checked
        if not any(p.cell.method == m for p in out):
            try:
                resolve_hparams(get_method(m), "imagenet", 16, config["preset"], overrides)
            except ConfigError as err:
                raise ConfigError(f"config key method_params.{m}: {err}") from err
    return out


def plan_lines(planned: list[PlannedCell], as_json: bool) -> list[str]:
    if as_json:
        return [json.dumps(p.as_dict(), sort_keys=True) for p in planned]
    lines = []
    for p in planned:
        c = p.cell
        hp = " ".join(f"{k}={_short(v)}" for k, v in sorted(p.hparams.items()))
        lines.append(f"{c.protocol} {c.backbone} {c.dataset} {c.method} {c.shots}shot seed{c.seed} "
                     f"preset={p.preset}{_targets(c)} {hp}")
    return lines


def _targets(c: Cell) -> str:
    """ eval=… (DG targets, base-to-new's `new`) cross_dataset=… (scored with their own classes)."""
    evals = [t for t in c.evals if t not in c.cross_dataset]
    return (f" eval={','.join(evals)}" if evals else "") + \
        (f" cross_dataset={','.join(c.cross_dataset)}" if c.cross_dataset else "")


def _short(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else (value if value and " " not in value else json.dumps(value))
