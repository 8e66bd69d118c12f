"""`fewclip <verb>`: one thin command per workflow step.

Each verb group is a module of this package with a `register(subparsers)` function and one
`cmd_<verb>` handler per verb (`data`, `features`, `run`, `plan`, `report`; shared argument
types in `args`); the handlers call the library, which carries no command-line code. This file
only assembles them and is the one error boundary: every failure a user can cause (bad input,
an unwritable path, a corrupt file; see `fewclip.errors.explain`) becomes one clear message and
a non-zero exit, with the traceback only under `--debug` (or FEWCLIP_DEBUG=1). Heavy imports
(torch, open_clip) happen inside the verbs, so `fewclip --help` and feature-only jobs start fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings

from ..errors import explain

VERB_MODULES = [
    "fewclip.cli.data",  # download, doctor, generate, split, pretrain-demo
    "fewclip.cli.features",  # encode
    "fewclip.cli.run",  # methods, run
    "fewclip.cli.plan",  # plan
    "fewclip.cli.report",  # collect, report
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewclip", description=__doc__.splitlines()[0])
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"fewclip {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (accepted anywhere on the command line)")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("FEWCLIP_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            # torch's note on a foreign pickle protocol would precede our own message about that file
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            result = args.func(args)
    except KeyboardInterrupt:
        print(f"fewclip {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the one boundary: known failures become one message
        explained = explain(err)
        if explained is None:
            raise  # a bug: keep the traceback
        message, code = explained
        if debug:
            traceback.print_exc()
        print(f"fewclip {args.verb}: error: {message}", file=sys.stderr)
        return code
    return int(result or 0)
