"""``reconciler emulator`` (a local AI Lake API) and ``reconciler demo`` (the emulator
plus the daemon on the sample manifests); both imported only when run."""

from __future__ import annotations

import argparse

from reconciler.cli.flags import (
    Formatter,
    SubParsers,
    add_logging,
)

__all__ = ["demo_command", "register_demo", "register_emulator"]


def register_emulator(sub: SubParsers[argparse.ArgumentParser]) -> None:
    from reconciler.ailake.emulator import cli as emulator_cli

    emulator = sub.add_parser(
        "emulator",
        help="serve a local AI Lake API (for the demo, tests and trying things out)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    emulator_cli.configure_parser(emulator)
    emulator.set_defaults(func=emulator_cli.run)


def register_demo(sub: SubParsers[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo", help="the emulator plus the daemon on the sample manifests",
        description="Start the local AI Lake emulator with its bundled config, run the "
        "daemon on the sample manifests with live progress, print the status table, then "
        "keep serving metrics and status until Ctrl-C (or exit with --once).",
        epilog="exit status (--once): as for 'run --once'", formatter_class=Formatter)
    demo.add_argument("--manifests", default=None, metavar="DIR",
                      help="manifests to run (default: ./manifests, else the bundled samples)")
    demo.add_argument("--config", default=None, metavar="FILE",
                      help="emulator config (default: the bundled one, matching the samples)")
    demo.add_argument("--state", default=None, metavar="PATH",
                      help="state store (default: a fresh temporary one)")
    demo.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                      help="metrics/status listener; a free port is used if it is taken")
    demo.add_argument("--once", action="store_true",
                      help="exit once everything converged, with run --once's status")
    add_logging(demo)
    demo.set_defaults(func=demo_command, log_level="error")


def demo_command(args: argparse.Namespace) -> int:
    from reconciler.cli.demo import run_demo

    return run_demo(args)
