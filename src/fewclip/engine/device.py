"""The device a cell runs on: a `--device` name checked (`check_device_name`) and turned into a
torch device (`resolve_device`). The names a run accepts are `fewclip.constants.DEVICE_NAMES`
and cuda:N."""

from __future__ import annotations

import torch

from ..constants import DEVICE_NAMES
from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` is the GPU when one is visible, else the CPU; asking for CUDA without one is refused."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def check_device_name(name: str) -> None:
    """Refuse a device name fewclip does not know, or a cuda:N beyond the visible GPUs."""
    base, _, index = str(name).partition(":")
    if base not in DEVICE_NAMES or (index and (base != "cuda" or not index.isdigit())):
        raise ConfigError(f"unknown device '{name}'; use cpu, cuda, cuda:N or auto")
    if index and torch.cuda.is_available() and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
