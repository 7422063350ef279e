"""Helpers of ``tests/test_clocks.py``: the real daemon under a fake wall clock (libfaketime).

libfaketime (Debian package ``faketime``) replaces the wall clock of one process: started at
a given instant and running ``xN`` faster (``FAKETIME="@2026-10-25 00:25:00 x1200"``), or
offset by what a file says, re-read on every call (``FAKETIME_TIMESTAMP_FILE``: a test
writes ``+1h`` into it and the daemon's clock jumps). The monotonic clock stays real
(``FAKETIME_DONT_FAKE_MONOTONIC=1``), as on a host whose wall clock is stepped or whose
zone changes: the daemon's own delays (poll backoff on the wall clock aside, the settle
window and the not-found tolerance on both) and asyncio's timers keep real time. The
emulator runs in the test process, outside faketime, on the real clock.

The library is preloaded into the daemon's interpreter directly rather than through the
``faketime`` wrapper: the wrapper forks and does not forward SIGTERM to its child, so a test
could neither stop the daemon gracefully nor wait for it. The wrapper's presence is what the
tests check (that is what installing the package gives); the library comes with it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from integration_support import cli_env

FAKETIME = shutil.which("faketime")


def _library() -> str | None:
    """The multi-threaded libfaketime of the installed package (the daemon has threads)."""
    patterns = ("/usr/lib/*/faketime/libfaketimeMT.so.1", "/usr/lib/faketime/libfaketimeMT.so.1",
                "/usr/local/lib/faketime/libfaketimeMT.so.1",
                "/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1",
                "/usr/local/lib/faketime/libfaketime.so.1")
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


LIBFAKETIME = _library()

needs_faketime = pytest.mark.skipif(
    FAKETIME is None or LIBFAKETIME is None,
    reason="libfaketime is not installed (no `faketime` on PATH or no libfaketime.so.1): "
           "apt-get install -y faketime (.ci/tools.sh does)")


def faked_env(*, start: datetime | None = None, rate: float | None = None,
              offset_file: Path | None = None) -> dict[str, str]:
    """The environment of a process whose wall clock starts at ``start`` (UTC) and runs
    ``rate`` times as fast, or is offset by what ``offset_file`` says (re-read on every
    call, so the test can step it)."""
    assert LIBFAKETIME is not None
    env = cli_env({"TZ": "UTC", "LD_PRELOAD": LIBFAKETIME,
                   "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    if offset_file is not None:
        env.update(FAKETIME_TIMESTAMP_FILE=str(offset_file), FAKETIME_NO_CACHE="1")
    else:
        assert start is not None and start.tzinfo is not None
        spec = "@" + start.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        env["FAKETIME"] = spec + (f" x{rate:g}" if rate else "")
    return env


def daemon_argv(folder: Path, url: str, state: Path, *extra: str,
                once: bool = True) -> list[str]:
    """``reconciler run`` without a listener, JSON logs, a 1 s interval (under a fast
    clock, the interval is what bounds how far the wall clock moves between passes)."""
    return [sys.executable, "-m", "reconciler", "run", *(["--once"] if once else []),
            "--manifests", str(folder), "--api-url", url, "--state", str(state),
            "--listen", "", "--interval", "1s", "--request-timeout", "2s",
            "--settle-window", "3s", "--log-format", "json", *extra]


@dataclass
class FakedDaemon:
    """One daemon process under libfaketime, logging to ``log``."""

    proc: subprocess.Popen[bytes]
    log: Path

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the daemon did not end within {timeout}s:\n{self.tail()}")\
                from None

    def wait_for(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.proc.returncode}) before "
                                     f"{what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout}s:\n{self.tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM (stop submitting, record, exit), then wait; SIGKILL if it lingers."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the daemon's process group (it is the only member) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def faked_daemon(argv: Sequence[str], env: dict[str, str], log: Path) -> Iterator[FakedDaemon]:
    """Start ``argv`` under ``env`` in its own process group; killed at the end whatever
    happened (a test's timeout included)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    daemon = FakedDaemon(proc, log)
    try:
        yield daemon
    finally:
        if proc.poll() is None:
            daemon.kill()


def run_faked(argv: Sequence[str], env: dict[str, str], log: Path,
              timeout: float = 60) -> FakedDaemon:
    """Run ``argv`` under ``env`` to its end (``--once``)."""
    with faked_daemon(argv, env, log) as daemon:
        daemon.wait(timeout)
    return daemon
