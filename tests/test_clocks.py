"""Rule 6 (time only moves forward for a manifest) and the clocks of rules 2, 1 and 5, with
the REAL daemon under a fake wall clock (libfaketime, see ``clock_support``), against a real
emulator on the real clock.

- a daily 02:30 Europe/Prague schedule across the fall-back night (2026-10-25) fires once,
  at the first 02:30; across the spring-forward night (2026-03-29) once, at 03:00 CEST;
- a clock set back across an interval boundary does not run the older window again;
- a jump forward past a deadline: an operation that ended while the daemon was down is
  recorded by a last look (in sync), not "Timed out";
- a wall clock stepped forward during a settle window or a not-found tolerance ends
  neither early (they are measured on the monotonic clock too).

The fast-clock cases run the wall clock 1200 times as fast (20 fake minutes a second) and
follow it with a probe manifest (``clock``, one run per 30 fake minutes): its latest
window says how far the daemon's clock got. The pure counterparts (windows across DST,
clocks set back, the planner keeping the recorded window) are in ``tests/test_windows.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clock_support import (
    FakedDaemon,
    daemon_argv,
    faked_daemon,
    faked_env,
    needs_faketime,
    run_faked,
)
from integration_support import (
    executions,
    manifest,
    operations,
    running_emulator,
    status_json,
    wait_for,
    write_manifest,
    write_manifests,
)

from reconciler.model.lifecycle import IntentState as S
from reconciler.store.sqlite import Store

pytestmark = needs_faketime

PRAGUE = "Europe/Prague"
#: fake seconds per real second in the fast-clock cases
RATE = 1200
#: 2 fake hours are 6 real seconds: a pass delayed by a loaded machine still starts the tick
DAILY_0230 = {"schedule": "30 2 * * *", "timezone": PRAGUE, "startingDeadline": "2h"}


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def recorded(state: Path, name: str) -> list[Any]:
    """Every recorded intent of ``name`` (read-only; empty while the store is being made)."""
    if not state.exists():
        return []
    try:
        with Store(state, readonly=True) as store:
            return list(store.intents_named(name))
    except Exception:
        return []


def latest_window(state: Path, name: str) -> str:
    return max((r.window for r in recorded(state, name) if r.window), default="")


@dataclass
class Night:
    daemon: FakedDaemon
    state: Path
    #: the emulator's executions and operations at the end
    runs: list[dict[str, Any]]
    ops: list[dict[str, Any]]

    def nightly(self) -> list[dict[str, Any]]:
        return [e for e in self.runs if e["payload"] == {"job": "nightly"}]

    def claims(self) -> list[datetime]:
        """The daemon's (fake) wall-clock times of its nightly claims."""
        return [parse(e["timestamp"]) for e in self.daemon.named("transition")
                if e["name"] == "nightly" and e["state"] == S.SUBMITTING]


def fast_night(tmp_path: Path, start: datetime, until: datetime) -> Night:
    """The daemon (not ``--once``) on a daily 02:30 Prague manifest plus the ``clock``
    probe, under a wall clock that starts at ``start`` and runs ``RATE`` times as fast,
    until the probe shows the clock passed ``until``; then SIGTERM."""
    folder, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(folder, [
        manifest("nightly", "instant", payload={"job": "nightly"}, policy=DAILY_0230,
                 timeout="24h"),
        manifest("clock", "quick", payload={"job": "clock"}, policy={"interval": "30m"},
                 timeout="24h"),
    ])
    target = until.strftime("%Y-%m-%dT%H:%M:%SZ")
    real_seconds = (until - start).total_seconds() / RATE
    with running_emulator() as emu, faked_daemon(
            daemon_argv(folder, emu.url, state, "--rate-limit", "0", once=False),
            faked_env(start=start, rate=RATE), tmp_path / "daemon.log") as daemon:
        daemon.wait_for(lambda: latest_window(state, "clock") >= target,
                        timeout=real_seconds + 30, what=f"the fake clock to pass {target}")
        assert daemon.stop() == 0, daemon.tail()
        return Night(daemon, state, executions(emu.url), operations(emu.url))


# ---------------------------------------------------------------------------- DST


@pytest.mark.timeout(120)
def test_fall_back_a_daily_0230_in_prague_fires_once_at_the_first_0230(
        tmp_path: Path) -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens at 00:30 UTC and at 01:30 UTC.
    # From 01:50 CEST on the 25th (the 24th's tick is a day old: missed, never caught up)
    # to 03:30 CET.
    night = fast_night(tmp_path, datetime(2026, 10, 24, 23, 50, tzinfo=UTC),
                       datetime(2026, 10, 25, 2, 30, tzinfo=UTC))

    assert len(night.nightly()) == 1, night.nightly()
    assert [r.window for r in recorded(night.state, "nightly")] == ["2026-10-25T00:30:00Z"]
    (claimed,) = night.claims()
    first, repeat = (datetime(2026, 10, 25, h, 30, tzinfo=UTC) for h in (0, 1))
    assert first <= claimed < repeat, claimed
    assert all(op["executions"] == 1 for op in night.ops)
    assert status_json(night.state)["nightly"]["state"] == S.IN_SYNC


@pytest.mark.timeout(120)
def test_spring_forward_a_daily_0230_in_prague_fires_once_at_0300_cest(
        tmp_path: Path) -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 never happens; the tick is 03:00 CEST
    # (01:00 UTC). From 01:00 CET to 04:30 CEST.
    night = fast_night(tmp_path, datetime(2026, 3, 29, 0, 0, tzinfo=UTC),
                       datetime(2026, 3, 29, 2, 30, tzinfo=UTC))

    assert len(night.nightly()) == 1, night.nightly()
    assert [r.window for r in recorded(night.state, "nightly")] == ["2026-03-29T01:00:00Z"]
    (claimed,) = night.claims()
    tick = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert tick <= claimed < tick + timedelta(hours=1), claimed
    assert all(op["executions"] == 1 for op in night.ops)


# ---------------------------------------------------------------------------- set back


@pytest.mark.timeout(120)
def test_a_clock_set_back_across_an_interval_boundary_does_not_run_the_older_window(
        tmp_path: Path) -> None:
    folder, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifest(folder, manifest("hourly", "quick", payload={"job": "hourly"},
                                    policy={"interval": "1h"}))
    t = datetime(2026, 6, 1, 12, 10, tzinfo=UTC)
    with running_emulator() as emu:
        def run(at: datetime, label: str) -> Any:
            done = run_faked(daemon_argv(folder, emu.url, state), faked_env(start=at),
                             tmp_path / f"{label}.log")
            assert done.proc.returncode == 0, done.tail()
            return done

        run(t + timedelta(hours=2), "ahead")  # window 14:00
        assert [r.window for r in recorded(state, "hourly")] == ["2026-06-01T14:00:00Z"]

        back = run(t, "set-back")  # the clock says 12:10: the 12:00 window is older
        assert len(executions(emu.url)) == 1
        assert not [e for e in back.named("transition") if e["state"] == S.SUBMITTING]
        assert [r.window for r in recorded(state, "hourly")] == ["2026-06-01T14:00:00Z"]
        assert status_json(state)["hourly"]["state"] == S.IN_SYNC

        run(t + timedelta(hours=3), "forward-again")  # and the 15:00 window is new
        assert sorted(r.window for r in recorded(state, "hourly")) == [
            "2026-06-01T14:00:00Z", "2026-06-01T15:00:00Z"]
        assert len(executions(emu.url)) == 2
        assert all(op["executions"] == 1 for op in operations(emu.url))


# ---------------------------------------------------------------------------- jumps


@pytest.mark.timeout(120)
def test_a_jump_past_the_deadline_records_what_ended_meanwhile_by_a_last_look(
        tmp_path: Path) -> None:
    """The daemon is killed (-9) while a 2 s command runs under a 30 min timeout; the
    command succeeds meanwhile; the daemon comes back with its clock 2 h ahead, far past
    the deadline: the last look reads the success, and a success stays a success."""
    folder, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifest(folder, manifest("job", "long", payload={"x": 1}, timeout="30m"))
    with running_emulator() as emu:
        with faked_daemon(daemon_argv(folder, emu.url, state),
                          faked_env(start=datetime.now(UTC)), tmp_path / "first.log") as first:
            first.wait_for(lambda: [r.status for r in recorded(state, "job")] == [S.PENDING],
                           timeout=30, what="the operation to be pending")
            first.kill()
        wait_for(lambda: [e["status"] for e in executions(emu.url)] == ["succeeded"],
                 timeout=10, what="the command to succeed on the server")

        ahead = faked_env(start=datetime.now(UTC) + timedelta(hours=2))
        planned = subprocess.run(
            [sys.executable, "-m", "reconciler", "plan", "--manifests", str(folder),
             "--state", str(state), "-o", "json"],
            capture_output=True, text=True, env=ahead, timeout=60, check=False)
        assert [a["action"] for a in json.loads(planned.stdout)["actions"]] == ["timeout"], \
            planned.stdout  # past its deadline: what the restart does is the last look
        later = run_faked(daemon_argv(folder, emu.url, state), ahead, tmp_path / "later.log")

        assert later.proc.returncode == 0, later.tail()
        row = status_json(state)["job"]
        assert row["state"] == S.IN_SYNC and row["error"] is None, row
        ended = [e for e in later.named("transition") if e["name"] == "job"]
        assert [e["state"] for e in ended] == [S.IN_SYNC], ended
        assert len(executions(emu.url)) == 1


def step_clock(offset_file: Path, offset: str) -> None:
    offset_file.write_text(offset + "\n")


@pytest.mark.timeout(120)
def test_a_wall_clock_stepped_forward_does_not_end_a_settle_window_early(
        tmp_path: Path) -> None:
    """Every run POST is held 4 s, the client gives up after 1 s, the settle window is
    8 s. Once the POST's outcome is unknown the wall clock is stepped 2 h forward: the
    window still lasts its 8 s on the monotonic clock, so the lookups adopt the run when
    it starts instead of sending it again (``dedup: false`` would execute it twice)."""
    folder, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifest(folder, manifest("held", "quick", payload={"x": 1}, timeout="24h"))
    offset = tmp_path / "offset"
    step_clock(offset, "+0")
    with running_emulator(dedup=False, faults={"holdBeforeExecute": "4s"}) as emu:
        with faked_daemon(daemon_argv(folder, emu.url, state, "--request-timeout", "1s",
                                      "--settle-window", "8s"),
                          faked_env(offset_file=offset), tmp_path / "daemon.log") as daemon:
            daemon.wait_for(lambda: daemon.named("run_outcome_unknown"), timeout=30,
                            what="an unanswered POST")
            step_clock(offset, "+2h")
            code = daemon.wait(60)
        assert code == 0, daemon.tail()
        assert [(op["posts"], op["executions"]) for op in operations(emu.url)] == [(1, 1)]
        assert status_json(state)["held"]["state"] == S.IN_SYNC
        stamps = [parse(e["timestamp"]) for e in daemon.events() if "timestamp" in e]
        assert stamps[-1] - stamps[0] > timedelta(hours=1), "the clock was not stepped"


@pytest.mark.timeout(120)
def test_a_wall_clock_stepped_forward_does_not_end_the_not_found_tolerance_early(
        tmp_path: Path) -> None:
    """Every operation answers 404 for 3 s after its 202, the not-found tolerance is
    5 s. After the first 404 the wall clock is stepped 2 h forward: the operation is not
    declared lost (5 s on the monotonic clock have not passed) and ends in sync."""
    folder, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifest(folder, manifest("hidden", "quick", payload={"x": 1}, timeout="24h"))
    offset = tmp_path / "offset"
    step_clock(offset, "+0")
    with running_emulator(dedup=False, faults={"notFoundAfterAccept": "3s"}) as emu:
        with faked_daemon(daemon_argv(folder, emu.url, state, "--not-found-tolerance", "5s"),
                          faked_env(offset_file=offset), tmp_path / "daemon.log") as daemon:
            daemon.wait_for(lambda: daemon.named("operation_not_visible"), timeout=30,
                            what="a 404 of the accepted operation")
            step_clock(offset, "+2h")
            code = daemon.wait(60)
        assert code == 0, daemon.tail()
        assert status_json(state)["hidden"]["state"] == S.IN_SYNC
        assert [(op["posts"], op["executions"]) for op in operations(emu.url)] == [(1, 1)]
        states = Counter(e["state"] for e in daemon.named("transition"))
        assert states[S.LOST] == 0, daemon.tail()
