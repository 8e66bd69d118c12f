"""The method registry. A method is one file in this package (or a user's file named in
FEWCLIP_PLUGINS) that subclasses `Method` and is decorated with `@register`.

A method declares:
- `name`, and `needs`: "features" (works on the feature store) or "images";
- `hparams`: defaults, `presets`: overrides per preset ("clean", "official"), and optionally
  `defaults_for(dataset, shots, preset, protocol)` for rules such as epochs per shot count or
  the settings a protocol's official scripts use (a plugin may leave `protocol` out);
- its math: `setup(task)` (build/initialise, may return selected values), `loss(batch, epoch)`
  when it trains, `finish(task)` after training, and `logits(x, classes)`.
The engine (fewclip.engine) owns data, loops, devices, precision and checkpoints.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..constants import PRECISIONS, PRESETS, PROTOCOLS
from ..errors import ConfigError

REGISTRY: dict[str, type["Method"]] = {}
# One cell's memory (MB) and run time (minutes) when a method declares none.
RESOURCE_DEFAULTS = {"features": {"mem_mb": 4000, "runtime": 15}, "images": {"mem_mb": 16000, "runtime": 240}}


class NotApplicable(Exception):
    """The method cannot evaluate this class set (e.g. a class-specific head on unseen classes)."""


@dataclass
class ClassSet:
    """The classes a classifier scores: names, hand-crafted text features, and where each sits
    among the training classes (None when the classes were never seen in training)."""

    names: list[str]
    text_features: torch.Tensor  # [C, d], L2-normalised
    train_index: torch.Tensor | None = None  # [C] long
    template: str = "a photo of a {}."

    def subset(self, index) -> "ClassSet":
        index = torch.as_tensor(index, dtype=torch.long)
        ti = None if self.train_index is None else self.train_index[index]
        return ClassSet([self.names[i] for i in index.tolist()], self.text_features[index], ti, self.template)


class Method(nn.Module):
    name: ClassVar[str] = ""
    needs: ClassVar[str] = "features"  # or "images"
    trains: ClassVar[bool] = False
    hparams: ClassVar[dict[str, Any]] = {}
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # What one cell needs on the paper's hardware, on a dataset of CoOp's size (the workflow scales it
    # for ImageNet-sized ones): {"mem_mb": MB, "runtime": minutes}. Keys left out take the defaults of
    # the method's side (`RESOURCE_DEFAULTS`).
    resources: ClassVar[dict[str, int]] = {}

    def __init__(self, hp: dict[str, Any]):
        super().__init__()
        self.hp = dict(hp)

    @classmethod
    def resource_needs(cls) -> dict[str, int]:
        """{"mem_mb", "runtime"} of one cell: the class's `resources` over its side's defaults."""
        return {**RESOURCE_DEFAULTS[cls.needs], **cls.resources}

    @classmethod
    def defaults_for(cls, dataset: str, shots: int, preset: str, protocol: str = "fewshot") -> dict[str, Any]:
        """Hyper-parameters that depend on the cell (epochs per shot count, per-dataset values,
        the protocol's official config)."""
        return {}

    # --- the method's math; the engine calls these ---
    def setup(self, task) -> dict[str, Any]:
        return {}

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def loss(self, batch, epoch: int) -> torch.Tensor:  # pragma: no cover - trained methods override
        raise TypeError(f"method {self.name} does not train")

    def finish(self, task) -> dict[str, Any]:
        return {}

    def logits(self, x: torch.Tensor, classes: ClassSet) -> torch.Tensor:
        raise TypeError(f"method {self.name} defines no logits")


def register(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a `name`")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise TypeError(f"method name '{cls.name}' is registered twice ({REGISTRY[cls.name].__module__}, {cls.__module__})")
    if cls.needs not in ("features", "images"):
        raise TypeError(f"method {cls.name}: needs must be 'features' or 'images'")
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
        spec = importlib.util.spec_from_file_location(f"fewclip_plugin_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        importlib.import_module(entry)


def get_method(name: str) -> type[Method]:
    methods = load_all()
    if name not in methods:
        raise ConfigError(f"unknown method '{name}'; registered methods: {', '.join(sorted(methods))}")
    return methods[name]


def image_methods() -> list[str]:
    """The registered methods that train through the image encoder (`needs = "images"`)."""
    return sorted(name for name, cls in load_all().items() if cls.needs == "images")


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
        value = as_number(value) if isinstance(hp.get(key), float) else value
        if key not in hp:
            raise ConfigError(
                f"method {cls.name} has no hyper-parameter '{key}'; valid keys: {', '.join(sorted(hp))}"
            )
        default = hp[key]
        if default is not None and not _same_kind(default, value):
            raise ConfigError(
                f"hyper-parameter '{key}' of method {cls.name} must be {type(default).__name__} "
                f"(default {default!r}), got {value!r}"
            )
        hp[key] = float(value) if isinstance(default, float) and isinstance(value, int) else value
    validate_hparams(cls, hp)
    return hp


# Value rules by hyper-parameter name (any method that uses the name gets them).
POSITIVE_INTS = ("epochs", "batch_size", "views", "n_ctx", "n_prompts", "search_steps", "reduction",
                 "cavpt_classes", "cavpt_kv_tokens", "cavpt_layers", "cavpt_qk_dim")
NON_NEGATIVE_INTS = ("warmup_epochs", "text_warmup_epochs", "guidance_epochs")
POSITIVE_FLOATS = ("lr", "text_lr", "eps")
NON_NEGATIVE_FLOATS = ("warmup_lr", "weight_decay", "guidance_weight", "init_std", "alpha", "beta_max",
                       "alpha_max", "init_alpha", "init_beta")
UNIT_FLOATS = {"momentum": (0.0, 1.0), "ratio": (0.0, 1.0), "crop_scale_min": (0.0, 1.0)}


def _choices() -> dict[str, tuple[str, ...]]:
    from ..models.templates import TEMPLATE_SETS

    return {
        "optimizer": ("sgd", "adamw"),
        "schedule": ("cosine_epoch", "cosine_iter", "constant"),
        "templates": tuple(TEMPLATE_SETS),
        "precision": PRECISIONS,
        "class_token_position": ("end", "middle", "front"),
        "search_split": ("fewshot_val", "full_val", "test"),
        "fit_on": ("raw", "normalised"),
        "side": ("visual", "text", "both"),
    }


def validate_hparams(cls: type[Method], hp: dict[str, Any]) -> None:
    """Refuse values no run can use: non-positive epochs/batch sizes/views, non-finite or
    non-positive learning rates, unknown optimizers/schedules/templates. Called by
    `resolve_hparams`, so `fewclip run` and the workflow's planner check the same rules
    before any job; raises one ConfigError naming every bad value."""
    import math

    problems = []

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    for key, value in hp.items():
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key}={value!r} (must be a finite number)")
        elif key in POSITIVE_INTS and number(value) and not value >= 1:
            problems.append(f"{key}={value!r} (must be at least 1)")
        elif key in NON_NEGATIVE_INTS and number(value) and value < 0:
            problems.append(f"{key}={value!r} (must be 0 or more)")
        elif key in POSITIVE_FLOATS and number(value) and not value > 0:
            problems.append(f"{key}={value!r} (must be greater than 0)")
        elif key in NON_NEGATIVE_FLOATS and number(value) and value < 0:
            problems.append(f"{key}={value!r} (must be 0 or more)")
        elif key in UNIT_FLOATS and number(value) and not UNIT_FLOATS[key][0] <= value <= UNIT_FLOATS[key][1]:
            lo, hi = UNIT_FLOATS[key]
            problems.append(f"{key}={value!r} (must be between {lo} and {hi})")
        elif key == "ratios" and isinstance(value, list) and not (
                value and all(number(v) and 0 <= v <= 1 for v in value)):
            problems.append(f"{key}={value!r} (must be a non-empty list of numbers between 0 and 1)")
    choices = _choices()
    for key, valid in choices.items():
        value = hp.get(key)
        if isinstance(value, str) and value not in valid:
            problems.append(f"{key}={value!r} (valid: {', '.join(valid)})")
    if hp.get("csc") and (hp.get("ctx_init") or "").strip():
        problems.append("csc=true with ctx_init (the official code ignores class-specific contexts when the "
                        "context is initialised from words: set ctx_init='' for CSC, or csc=false)")
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
