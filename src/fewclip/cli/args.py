"""The argument types the verbs share: each turns a bad value into a usage error (exit 2)."""

from __future__ import annotations

import argparse
import re

from ..constants import DEVICE_NAMES, MAX_SEED
from ..errors import ConfigError
from ..paths import check_name

DEVICE_NAME = re.compile(r"^(" + "|".join(map(re.escape, DEVICE_NAMES)) + r"|cuda:\d+)$")


def int_type(what: str, low: int, high: int | None = None):
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


seed_type = int_type("a seed", 0, MAX_SEED)
shots_type = int_type("shots (K images per class)", 1)
count_type = int_type("a count", 0)


def resamples_type(text: str) -> int:
    """Bootstrap resamples: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (a bootstrap needs resamples), got {value}")
    return value


def device_type(text: str) -> str:
    if not DEVICE_NAME.match(text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N or auto")
    return text


def name_type(kind: str):
    """An argparse type: a name that becomes one folder of a path (`paths.check_name`)."""

    def parse(text: str) -> str:
        try:
            return check_name(kind, text)
        except ConfigError as err:  # argparse puts the flag in front
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def backbone_args(p) -> None:
    """The backbone flags of `encode` and `run`."""
    p.add_argument("--backbone", required=True, help="open_clip model name, e.g. RN50, ViT-B-16, fewclip-tiny-vit")
    p.add_argument("--backbone-key", type=name_type("backbone key"),
                   help="name used in paths (default: the model name): letters, digits, '_', '.', '-', "
                        "beginning with a letter or digit")
    p.add_argument("--pretrained", default="openai", help="open_clip tag, a checkpoint file, or none")
    p.add_argument("--device", default="auto", type=device_type, help="cpu, cuda, cuda:N or auto")
