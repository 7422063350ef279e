"""The ``reconciler`` command line: commands, their renderings, and the demo."""

from __future__ import annotations

from reconciler.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
