"""``reconciler demo``: the local emulator and the daemon on the sample manifests.

What a new user runs first: it shows every transition as it happens (submissions,
retries with backoff, dependency order, a suspended manifest, a skipped cron tick), then
the status table, then keeps serving ``/metrics`` and ``/status`` until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import TextIO

from reconciler.ailake.client import ClientSettings
from reconciler.ailake.emulator import load_config, start_background
from reconciler.cli.render import status_table
from reconciler.execution.engine import Transition
from reconciler.listen import parse_listen
from reconciler.model.lifecycle import SETTLED_BAD, IntentState
from reconciler.observe import logs
from reconciler.observe.status import status_rows
from reconciler.runtime.daemon import Daemon, DaemonSettings
from reconciler.store.sqlite import Store

__all__ = ["Progress", "bundled_manifests", "run_demo"]

#: how a record was retired when its manifest changed (it is not a state of the manifest)
SUPERSEDED = "superseded"
#: transitions whose reason the progress line shows
EXPLAINED: frozenset[str] = frozenset({*SETTLED_BAD, IntentState.ORPHANED, SUPERSEDED})


def bundled_manifests() -> Path:
    """The sample manifests shipped in the package (a copy of the repo's manifests/)."""
    return Path(str(resources.files("reconciler").joinpath("data/demo-manifests")))


class Progress:
    """A daemon listener printing one aligned line per transition."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = time.monotonic()

    def __call__(self, event: Transition) -> None:
        elapsed = time.monotonic() - self.started
        detail = ""
        if event.state == IntentState.SUBMITTING:
            detail = f"attempt {(event.attempt or 0) + 1}, operation {event.operation_id}"
        elif event.duration is not None:  # an operation's end: succeeded, failed, timed out
            detail = f"after {event.duration:.1f}s"
        if event.error:
            detail += f" - {event.error.get('title')}: {event.error.get('detail')}"
        if event.reason and event.state in EXPLAINED:
            detail += f" ({event.reason})"
        print(f"{elapsed:6.1f}s  {event.name:<26} {event.state:<10} {detail}".rstrip(),
              file=self.out, flush=True)


def _free_listen(listen: str) -> str:
    """``listen`` if it can be bound, else the same host on a free port."""
    host, port = parse_listen(listen)
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return f"{host}:0"
    return listen


def run_demo(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run the demo; returns the exit status (``--once``: as ``run --once``)."""
    out = out or sys.stdout
    logs.configure(level=args.log_level, fmt=args.log_format, stream=sys.stderr)
    manifests = Path(args.manifests) if args.manifests else (
        Path("manifests") if Path("manifests").is_dir() else bundled_manifests())
    config = load_config(args.config)
    workdir = tempfile.TemporaryDirectory(prefix="reconciler-demo-")
    state = args.state or str(Path(workdir.name) / "state.db")
    with workdir, start_background(config) as emulator:
        print(f"AI Lake emulator: {emulator.url}  (admin: {emulator.url}/_emulator/executions)",
              file=out)
        print(f"Manifests: {manifests}   State: {state}\n", file=out, flush=True)
        settings = DaemonSettings(
            manifests=manifests, client=ClientSettings(base_url=emulator.url), state=state,
            interval=30.0, listen=_free_listen(args.listen), once=True,
        )

        def listening(url: str) -> None:
            print(f"Reconciler: {url}/metrics  {url}/status\n", file=out, flush=True)

        progress = Progress(out)
        daemon = Daemon(settings, listeners=[progress], on_listening=listening)
        code = asyncio.run(daemon.run())
        elapsed = time.monotonic() - progress.started
        with Store(state) as store:
            rows = status_rows(store.latest_by_name(), daemon.plan.views if daemon.plan else None)
        if daemon.stopped:
            print(f"\nInterrupted after {elapsed:.1f}s:\n", file=out)
            print(status_table(rows), file=out, flush=True)
            return 130
        print(f"\nConverged in {elapsed:.1f}s (exit status {code}):\n", file=out)
        print(status_table(rows), file=out, flush=True)
        if args.once:
            return code
        print("\nStill reconciling; metrics and status stay served. Ctrl-C to stop.",
              file=out, flush=True)
        forever = dataclasses.replace(settings, once=False)
        asyncio.run(Daemon(forever, listeners=[progress], on_listening=listening).run())
    return 0
