"""``reconciler retry``: a fresh retry budget for a stalled or failed manifest, due now."""

from __future__ import annotations

import argparse
import sys

from reconciler.cli.flags import (
    EXIT_FAILED,
    EXIT_OK,
    Formatter,
    SubParsers,
    add_state,
)
from reconciler.cli.reading import clock, no_store
from reconciler.execution.engine import retry
from reconciler.store import open_store

__all__ = ["command", "register"]


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    retry_p = sub.add_parser(
        "retry", help="retry a stalled or failed manifest without a commit",
        description="Give a stalled (retries exhausted, timed out, refused) or failed "
        "manifest a fresh retry budget and deadline, due now. The daemon picks it up on its "
        "next pass. To re-run a command that succeeded, change its 'rerun' field instead.",
        epilog="exit status: 0 scheduled, 1 nothing to retry", formatter_class=Formatter)
    retry_p.add_argument("name", help="metadata.name of the manifest")
    add_state(retry_p)
    retry_p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    missing = no_store(args.state)
    if missing is not None:
        print(f"reconciler: {missing}", file=sys.stderr)
        return EXIT_FAILED
    with open_store(args.state) as store:
        changed = retry(store, args.name, now=clock())
    if not changed:
        print(f"reconciler: {args.name!r} has no failed or stalled intent to retry",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.name}: retry scheduled; the running daemon picks it up on its next pass "
          "(send it SIGHUP or POST /hooks/reconcile to make that now).")
    return EXIT_OK
