"""`fewclip <verb>`: one thin command per workflow step.

Each verb lives in the module that owns the work and registers itself through a
`register(subparsers)` function; this file only assembles them and turns user errors
into one clear message and a non-zero exit. Heavy imports (torch, open_clip) happen
inside the verbs, so `fewclip --help` and feature-only jobs start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import FewclipError

VERB_MODULES = [
    "fewclip.commands",  # doctor, generate, split, encode, run, methods
    "fewclip.analysis.commands",  # collect, report
    "fewclip.demo_commands",  # pretrain-demo
    "fewclip.data.download",  # download
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewclip", description=__doc__.splitlines()[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"fewclip {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except FewclipError as err:
        print(f"fewclip {args.verb}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"fewclip {args.verb}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
