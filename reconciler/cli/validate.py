"""``reconciler validate``: check manifests offline, one line per problem."""

from __future__ import annotations

import argparse
import json
import sys

from reconciler.cli.flags import (
    EXIT_FAILED,
    EXIT_OK,
    Formatter,
    SubParsers,
    add_output,
)
from reconciler.source.kinds import check_manifests_path
from reconciler.source.loader import load_manifests

__all__ = ["command", "register"]


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    validate = sub.add_parser(
        "validate",
        help="check manifests offline (schema and semantic rules)",
        description="Check ServiceCommand manifests offline: YAML syntax, the JSON Schema "
        "(schemas/servicecommand.schema.json), unique names, dependsOn targets and cycles, "
        "payload size, durations and cron expressions. One line per problem: "
        "FILE:LINE: NAME: message.",
        epilog="exit status: 0 all valid, 1 any problem",
        formatter_class=Formatter,
    )
    validate.add_argument("paths", nargs="+", metavar="PATH",
                          help="manifest files or directories (searched recursively for "
                          "*.yaml and *.yml)")
    add_output(validate)
    validate.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    for path in args.paths:
        check_manifests_path(path)
    result = load_manifests(*args.paths)
    if args.output == "json":
        print(json.dumps({
            "valid": not result.problems,
            "manifests": len(result.commands),
            "files": result.files,
            "problems": [
                {"file": p.file, "line": p.line, "name": p.name, "message": p.message}
                for p in result.problems
            ],
        }, indent=2))
    else:
        for problem in result.problems:
            print(problem)
        summary = (f"{len(result.commands)} valid manifest(s) in {result.files} file(s)"
                   + (f", {len(result.problems)} problem(s)" if result.problems else ""))
        print(summary, file=sys.stderr)
    return EXIT_FAILED if result.problems else EXIT_OK
