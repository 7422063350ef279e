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
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TextIO

from reconciler.ailake.client import ClientSettings
from reconciler.ailake.emulator import load_config, start_background
from reconciler.cli.render import status_table
from reconciler.execution.engine import Transition, utcnow
from reconciler.listen import normalize_listen, parse_listen
from reconciler.model.lifecycle import SETTLED_BAD, IntentState
from reconciler.observe import logs
from reconciler.observe.status import status_rows
from reconciler.runtime.daemon import Daemon, DaemonSettings
from reconciler.store import open_store

__all__ = ["Progress", "bundled_manifests", "run_demo"]

#: how a record was retired when its manifest changed (it is not a state of the manifest)
SUPERSEDED = "superseded"
#: transitions whose reason the progress line shows
EXPLAINED: frozenset[str] = frozenset({*SETTLED_BAD, IntentState.ORPHANED, SUPERSEDED})
#: seconds an operation stays pending between two "still pending" lines
TICK = 5.0


def bundled_manifests() -> Path:
    """The sample manifests shipped in the package (a copy of the repo's manifests/)."""
    return Path(str(resources.files("reconciler").joinpath("data/demo-manifests")))


class Progress:
    """A daemon listener printing one aligned line per transition, and (:meth:`tick`,
    called by a ticker thread) a "still pending" line with the elapsed time for every
    operation that has run :data:`TICK` seconds since its last line."""

    def __init__(self, out: TextIO, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        #: name -> (when its operation was accepted, when its last line was printed)
        self._pending: dict[str, tuple[float, float]] = {}

    def _print(self, name: str, state: str, detail: str) -> None:
        elapsed = self.clock() - self.started
        with self._lock:
            print(f"{elapsed:6.1f}s  {name:<26} {state:<10} {detail}".rstrip(),
                  file=self.out, flush=True)

    def __call__(self, event: Transition) -> None:
        detail = ""
        if event.state == IntentState.SUBMITTING:
            detail = f"attempt {event.attempt or 1}, operation {event.operation_id}"
        elif event.duration is not None:  # an operation's end: succeeded, failed, timed out
            detail = f"after {event.duration:.1f}s"
        if event.error:
            detail += f" - {event.error.get('title')}: {event.error.get('detail')}"
        if event.reason and event.state in EXPLAINED:
            detail += f" ({event.reason})"
        now = self.clock()
        with self._lock:
            if event.state == IntentState.PENDING:
                self._pending.setdefault(event.name, (now, now))
            else:
                self._pending.pop(event.name, None)
        self._print(event.name, event.state, detail)

    def tick(self) -> None:
        """A "still pending, 6s elapsed" line per operation pending :data:`TICK` seconds
        since it was accepted or last shown."""
        now = self.clock()
        with self._lock:
            due = [(name, since) for name, (since, shown) in sorted(self._pending.items())
                   if now - shown >= TICK]
            for name, since in due:
                self._pending[name] = (since, now)
        for name, since in due:
            self._print(name, IntentState.PENDING, f"still pending, {now - since:.0f}s elapsed")


def _ticking(progress: Progress) -> threading.Event:
    """Start a thread calling ``progress.tick()`` every second; set the event to stop it."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(1.0):
            progress.tick()

    threading.Thread(target=run, name="demo-ticker", daemon=True).start()
    return stop


def _free_listen(listen: str) -> str:
    """``listen`` if it can be bound, else the same host on a free port (``:PORT``: every
    interface, as for ``run``)."""
    listen = normalize_listen(listen)
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
        ticker = _ticking(progress)
        try:
            code = asyncio.run(daemon.run())
        finally:
            ticker.set()
        elapsed = time.monotonic() - progress.started
        timeouts = {c.name: c.timeout for c in daemon.load.commands} if daemon.load else {}
        with open_store(str(state), readonly=True) as store:
            rows = status_rows(store.latest_by_name(), daemon.plan.views if daemon.plan else None,
                               now=utcnow(), timeouts=timeouts)
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
        ticker = _ticking(progress)
        try:
            asyncio.run(Daemon(forever, listeners=[progress], on_listening=listening).run())
        finally:
            ticker.set()
    return 0
