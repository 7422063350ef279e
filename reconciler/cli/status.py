"""``reconciler status`` (every manifest and its last operation) and ``reconciler
history`` (every operation of one manifest): the state store, only read."""

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
    add_source,
    add_state,
)
from reconciler.cli.reading import clock, load_source, no_store, open_store_for_reading
from reconciler.cli.render import (
    history_json,
    history_rows,
    status_rows_json,
    status_table,
)
from reconciler.cli.settings import (
    git_settings,
)
from reconciler.errors import SourceError
from reconciler.execution.timing import Durations
from reconciler.observe import logs
from reconciler.observe.status import status_rows
from reconciler.planning.planner import plan
from reconciler.runtime.settings import git_secrets

__all__ = ["history_command", "register_history", "register_status", "status_command"]


def register_status(sub: SubParsers[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status", help="a table of every manifest and its last operation",
        description="Print every manifest recorded in the state store with its state, "
        "attempts, last operation and error. With --manifests (or --git-url), also "
        "manifests not yet submitted and the planner's view (waiting, suspended, invalid "
        "with FILE:LINE).",
        epilog="exit status: 0", formatter_class=Formatter)
    add_state(status)
    add_source(status, daemon=False)
    add_output(status)
    status.set_defaults(func=status_command)


def status_command(args: argparse.Namespace) -> int:
    logs.configure(level="error", fmt="console", stream=sys.stderr,
                   secrets=git_secrets(git_settings(args)))
    missing = no_store(args.state)
    if missing is not None:
        print(f"reconciler: {missing}", file=sys.stderr)
        return EXIT_FAILED
    now = clock()
    timeouts = {}
    with open_store_for_reading(args.state) as store:
        latest = store.latest_by_name()
        views = None
        try:
            with load_source(args, store, required=False) as loaded:
                if loaded is not None:
                    load = loaded[0]
                    views = plan(load.commands, store.intents(), now,
                                 windows=store.latest_windows(), held=load.held).views
                    timeouts = {c.name: c.timeout for c in load.commands}
        except SourceError as exc:  # still show what the store holds
            print(f"reconciler: warning: {exc}; showing the recorded states only",
                  file=sys.stderr)
        busy = any(r.in_flight for r in latest.values())
        typical = Durations(store.recent_durations()).typical if busy else None
    rows = status_rows(latest, views, now=now, timeouts=timeouts, typical=typical)
    if args.output == "json":
        print(json.dumps(status_rows_json(rows), indent=2))
    elif not rows:
        print(f"No intents recorded in {args.state}.")
    else:
        print(status_table(rows))
    return EXIT_OK


def register_history(sub: SubParsers[argparse.ArgumentParser]) -> None:
    history = sub.add_parser(
        "history", help="every operation of one manifest",
        description="Print every operation (attempt) ever sent for one manifest, oldest "
        "first, across spec changes and schedule windows.",
        epilog="exit status: 0, 1 unknown name", formatter_class=Formatter)
    history.add_argument("name", help="metadata.name of the manifest")
    add_state(history)
    add_output(history)
    history.set_defaults(func=history_command)


def history_command(args: argparse.Namespace) -> int:
    missing = no_store(args.state)
    if missing is not None:
        print(f"reconciler: {missing}", file=sys.stderr)
        return EXIT_FAILED
    with open_store_for_reading(args.state) as store:
        intents = store.intents_named(args.name)
        operations = store.operations(name=args.name)
    if not intents:
        print(f"reconciler: no manifest named {args.name!r} in {args.state}", file=sys.stderr)
        return EXIT_FAILED
    if args.output == "json":
        print(json.dumps(history_json(operations), indent=2))
    else:
        print(history_rows(intents, operations) if operations else
              f"{args.name}: recorded, but no operation was sent yet.")
    return EXIT_OK
