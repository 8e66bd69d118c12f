"""The method registry. A method is one file in this package (or a user's file named in
FEWCLIP_PLUGINS) that subclasses `Method` (the contract: fewclip.methods.base) and is decorated
with `@register`. Private modules (`_prompt.py`, `_tip.py`, ...) hold code several methods share.

The registry knows no method by name: it imports every module of the package and the plugins,
resolves a cell's hyper-parameters (defaults < per-cell rules < preset < overrides) and checks
them against each method's own declarations (`HP` types, ranges, choices; `check_hparams`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
from pathlib import Path
from typing import Any

from ..constants import PRESETS, PROTOCOLS
from ..errors import ConfigError
from .base import HP, RESOURCE_DEFAULTS, ClassSet, DataNeeds, Method, NotApplicable, train_hparams

__all__ = ["HP", "RESOURCE_DEFAULTS", "ClassSet", "DataNeeds", "Method", "NotApplicable", "train_hparams", "REGISTRY",
           "register",
           "load_all", "get_method", "image_methods", "sample_free_methods", "resolve_hparams", "validate_hparams",
           "as_number"]

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a `name`")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise TypeError(f"method name '{cls.name}' is registered twice ({REGISTRY[cls.name].__module__}, {cls.__module__})")
    if cls.needs not in ("features", "images"):
        raise TypeError(f"method {cls.name}: needs must be 'features' or 'images'")
    if not isinstance(cls.uses_fewshot_sample, bool):
        raise TypeError(f"method {cls.name}: uses_fewshot_sample must be True or False")
    REGISTRY[cls.name] = cls
    return cls


_loaded = False


def load_all() -> dict[str, type[Method]]:
    """Import every method module of this package and the user's plugins (FEWCLIP_PLUGINS:
    os.pathsep-separated module names or .py files)."""
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
        for entry in filter(None, os.environ.get("FEWCLIP_PLUGINS", "").split(os.pathsep)):
            _import_plugin(entry)
        _loaded = True
    return REGISTRY


def _import_plugin(entry: str) -> None:
    if entry.endswith(".py"):
        path = Path(entry)
        if not path.is_file():
            raise ConfigError(f"FEWCLIP_PLUGINS names {path}, which does not exist")
    try:
        if entry.endswith(".py"):
            spec = importlib.util.spec_from_file_location(f"fewclip_plugin_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            importlib.import_module(entry)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of the user's code becomes one clear error
        missing = getattr(err, "name", None) if isinstance(err, ModuleNotFoundError) else None
        if missing and not entry.endswith(".py") and (entry == missing or entry.startswith(f"{missing}.")):
            raise ConfigError(
                f"FEWCLIP_PLUGINS names the module {entry}, which is not installed (no module named {missing!r} "
                f"in this Python environment); install it here, name the plugin's .py file instead "
                f"(FEWCLIP_PLUGINS=path/to/{entry.rsplit('.', 1)[-1]}.py), or remove {entry} from FEWCLIP_PLUGINS"
            ) from err
        import traceback

        frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith("<frozen")]
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        raise ConfigError(f"the method plugin {entry} (FEWCLIP_PLUGINS) failed to load{where}: "
                          f"{type(err).__name__}: {err}. Fix the plugin, or remove it from FEWCLIP_PLUGINS") from err


def get_method(name: str) -> type[Method]:
    methods = load_all()
    if name not in methods:
        raise ConfigError(f"unknown method '{name}'; registered methods: {', '.join(sorted(methods))}")
    return methods[name]


def image_methods() -> list[str]:
    """The registered methods that train through the image encoder (`needs = "images"`)."""
    return sorted(name for name, cls in load_all().items() if cls.needs == "images")


def sample_free_methods() -> list[str]:
    """The registered methods whose result depends on neither K nor the seed (`uses_fewshot_sample
    = False`): the grid runs one cell of each per (protocol, backbone, dataset)."""
    return sorted(name for name, cls in load_all().items() if not cls.uses_fewshot_sample)


def resolve_hparams(cls: type[Method], dataset: str, shots: int, preset: str,
                    overrides: dict[str, Any] | None = None, protocol: str = "fewshot") -> dict[str, Any]:
    """defaults < per-cell rules < preset < user overrides; unknown keys and wrong types are errors.

    The one place settings are resolved: `fewclip run` records its result under `hparams`, and
    `fewclip plan` (what the workflow will run) prints the same dict."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; use 'clean' or 'official'")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{protocol}'; valid: {', '.join(PROTOCOLS)}")
    hp = dict(cls.hparams)
    if "protocol" in inspect.signature(cls.defaults_for).parameters:
        hp.update(cls.defaults_for(dataset, shots, preset, protocol=protocol))
    else:  # a plugin written against the older three-argument form
        hp.update(cls.defaults_for(dataset, shots, preset))
    hp.update(cls.presets.get(preset, {}))
    for key, value in (overrides or {}).items():
        if key not in hp:
            raise ConfigError(
                f"method {cls.name} has no hyper-parameter '{key}'; valid keys: {', '.join(sorted(hp))}"
            )
        default = hp[key]
        spec = cls.hparam_specs.get(key)
        if default is None and spec is not None and spec.kind is not None:
            default = spec.kind()  # a typed key whose default is "unset" (e.g. a per-dataset value)
        value = as_number(value) if isinstance(default, float) else value
        if default is not None and not _same_kind(default, value):
            raise ConfigError(
                f"hyper-parameter '{key}' of method {cls.name} must be {type(default).__name__} "
                f"(default {hp[key]!r}), got {value!r}"
            )
        hp[key] = float(value) if isinstance(default, float) and isinstance(value, int) else value
    validate_hparams(cls, hp)
    return hp


def validate_hparams(cls: type[Method], hp: dict[str, Any]) -> None:
    """Refuse values no run can use, from the method's own declarations: each key's range and
    choices (`HP`), any non-finite float, and the method's cross-key rules (`check_hparams`).
    Called by `resolve_hparams`, so `fewclip run` and the workflow's planner check the same
    rules before any job; raises one ConfigError naming every bad value."""
    import math

    specs = cls.hparam_specs
    problems = []
    for key, value in hp.items():
        spec = specs.get(key)
        if spec is not None:
            problem = spec.problem(key, value)
        elif isinstance(value, float) and not math.isfinite(value):
            problem = f"{key}={value!r} (must be a finite number)"
        else:
            problem = None
        if problem:
            problems.append(problem)
    problems += cls.check_hparams(hp)
    if problems:
        raise ConfigError(f"method {cls.name}: bad hyper-parameter value{'s' if len(problems) > 1 else ''}: "
                          + "; ".join(problems) + ". Fix them in --set or the config's method_params")


_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def as_number(value: Any) -> Any:
    """PyYAML (YAML 1.1) reads `1e-3` as the string '1e-3': give it back as the float it is."""
    if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
        return float(value)
    return value


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))
