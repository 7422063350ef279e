"""The ``reconciler`` command line: argument parsing and exit codes, nothing else.

Every flag also reads an environment variable (``RECONCILER_<FLAG>``), so the Helm chart
and scripts can configure the daemon either way; an explicit flag wins. The commands live
one family a module (:mod:`~reconciler.cli.run`, :mod:`~reconciler.cli.check`,
:mod:`~reconciler.cli.plan`, ...), their shared flags in :mod:`reconciler.cli.flags`:
here are the entry point and the wiring.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reconciler.cli import (
    check,
    emulator,
    plan,
    retry,
    run,
    status,
    store_commands,
    validate,
)
from reconciler.cli.flags import EXIT_CHANGES as EXIT_CHANGES
from reconciler.cli.flags import EXIT_FAILED as EXIT_FAILED
from reconciler.cli.flags import EXIT_OK as EXIT_OK
from reconciler.cli.flags import Formatter
from reconciler.cli.flags import env as env
from reconciler.cli.settings import daemon_settings
from reconciler.errors import ReconcilerError

# the clock of plan, status and retry (:func:`reconciler.cli.reading.clock` reads it from
# here, so a test sets it here)
from reconciler.execution.engine import utcnow as utcnow
from reconciler.version import __version__

__all__ = ["build_parser", "main"]

#: ``run``'s settings from its parsed flags (bench/benchlib.py imports it from here)
_settings = daemon_settings


def build_parser() -> argparse.ArgumentParser:
    """The whole CLI; sub-commands register their own flags."""
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="GitOps controller for GoodData Cloud AI Lake service commands: "
        "reads ServiceCommand manifests, runs each missing command exactly once through "
        "the AI Lake API, follows it to its end and exports Prometheus metrics.",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in (run.register, check.register, plan.register, validate.register,
                     status.register_status, status.register_history, retry.register,
                     emulator.register_emulator, emulator.register_demo):
        register(sub)
    store_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reconciler`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ReconcilerError as exc:
        print(f"reconciler: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
