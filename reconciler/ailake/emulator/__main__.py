"""``python -m reconciler.ailake.emulator``: run the AI Lake emulator without the main CLI.

Same flags and behaviour as ``reconciler emulator``; kept import-light so it starts fast.
"""

from __future__ import annotations

import argparse
import sys

from reconciler.ailake.emulator.cli import configure_parser, run


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m reconciler.ailake.emulator")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
