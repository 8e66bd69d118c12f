"""The planning verb: `plan` prints every cell the workflow would run (see `fewclip.plan`)."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("plan", help="every cell the workflow would run, with its resolved hyper-parameters")
    p.add_argument("--configfile", action="append", default=[],
                   help="config file(s), as for snakemake (default: the demo's config/config.yaml)")
    p.add_argument("--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides, as snakemake --config")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--workdir", default=".", help="the workflow folder (where config/ lies)")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> int:
    from ..plan import check_config, parse_key_values, plan, plan_lines, read_config

    config = check_config(read_config(args.configfile, parse_key_values(args.config), args.workdir))
    lines = plan_lines(plan(config), args.json)
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0
