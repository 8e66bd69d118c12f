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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError

REGISTRY: dict[str, type["Method"]] = {}
PROTOCOLS = ("fewshot", "base2new", "dg")


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

    def __init__(self, hp: dict[str, Any]):
        super().__init__()
        self.hp = dict(hp)

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


def resolve_hparams(cls: type[Method], dataset: str, shots: int, preset: str,
                    overrides: dict[str, Any] | None = None, protocol: str = "fewshot") -> dict[str, Any]:
    """defaults < per-cell rules < preset < user overrides; unknown keys and wrong types are errors.

    The one place settings are resolved: `fewclip run` records its result under `hparams`, and
    `fewclip plan` (what the workflow will run) prints the same dict."""
    if preset not in ("clean", "official"):
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
        if default is not None and not _same_kind(default, value):
            raise ConfigError(
                f"hyper-parameter '{key}' of method {cls.name} must be {type(default).__name__} "
                f"(default {default!r}), got {value!r}"
            )
        hp[key] = float(value) if isinstance(default, float) and isinstance(value, int) else value
    return hp


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))
