"""The PostgreSQL server stopped and started again under a running daemon.

One daemon (``reconciler run``, long-running, leader by the store's advisory lock) works
through the chaos scenario against an in-process emulator with ``dedup: false`` (a second
POST of an operation id would be a second execution). While operations are in flight the
server is stopped (``pg_ctl stop -m fast``: every session is terminated, nothing is
accepted) for a few seconds and started again. What must hold:

- the daemon keeps running (no exit, no traceback) and says what is wrong: ``/readyz``
  answers 503 naming the store, the log has an error naming the database, and neither the
  log nor ``/status``, ``/readyz`` or ``/metrics`` carry the DSN's password;
- once the server is back it is ready again, leads again, and completes every manifest as
  the scenario expects, with exactly the expected executions (none twice).

The server is this test's own (not the session's), so stopping it disturbs no other test.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from chaos_support import (
    RETRY,
    Replica,
    attempt_ids,
    build_scenario,
    replica_argv,
    status_of,
    wait_for,
)
from pg_support import PASSWORD, PgServer, free_port, started_server

from reconciler.ailake.emulator import EmulatorConfig, start_background
from reconciler.model.states import TERMINAL

OUTAGE = 3.0  # seconds the server is down


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    yield from started_server()


def _get(url: str) -> httpx.Response | None:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=5.0)
    return None


@pytest.mark.timeout(120)
def test_the_daemon_survives_a_database_restart_and_completes_everything_once(
        own_server: PgServer, tmp_path: Path) -> None:
    scenario = build_scenario(8, seed=11, faults={}, retry={**RETRY, "limit": 1})
    _, folder = scenario.write(tmp_path)
    ids = attempt_ids(folder)
    database = own_server.create_database()
    dsn = own_server.url(database)
    port = free_port()
    config = EmulatorConfig.from_dict({**scenario.emulator_config, "dedup": False},
                                      source="restart.yaml")
    with start_background(config, host="127.0.0.1", port=0) as emu:
        argv = replica_argv(folder, emu.url, ("--listen", f"127.0.0.1:{port}",
                                              "--rate-limit", "0"))
        daemon = Replica("a", argv, {"RECONCILER_STATE": dsn}, tmp_path / "daemon.log")
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(daemon.leading, 30, "the daemon to lead")
            wait_for(lambda: len(emu.state.list_executions()) >= 3, 30,
                     "the first executions")
            own_server.stop("fast")
            stopped = time.monotonic()
            seen: dict[str, str] = {}
            not_ready = None
            while time.monotonic() - stopped < OUTAGE:
                assert daemon.alive(), f"the daemon exited during the outage: {daemon.log}"
                ready = _get(f"{base}/readyz")
                if ready is not None and ready.status_code == 503:
                    not_ready = ready.text
                for path in ("/readyz", "/status", "/metrics"):
                    answer = _get(base + path)
                    if answer is not None:
                        seen[path] = answer.text
                time.sleep(0.3)
            own_server.start()
            assert not_ready is not None, f"/readyz never said not ready: {seen}"
            assert "state store" in not_ready, not_ready
            wait_for(lambda: (_get(f"{base}/readyz") or httpx.Response(0)).status_code == 200,
                     30, "ready again")

            def settled() -> bool:
                rows = status_of(folder, dsn)
                return all(rows.get(n, {}).get("state") in TERMINAL for n in scenario.expected)

            wait_for(settled, 60, "every manifest terminal", step=0.5)
            assert daemon.alive()
        finally:
            code = daemon.stop()
        executions = emu.state.list_executions()
    log = daemon.log.read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert not daemon.crashed(), log[-3000:]
    assert PASSWORD not in log
    for path, text in seen.items():
        assert PASSWORD not in text, path
    events = list(daemon.events())
    shown = f"postgresql://postgres@127.0.0.1:{own_server.port}/{database}"
    unavailable = [e for e in events if e["event"] == "store_unavailable"]
    assert unavailable and unavailable[0]["level"] == "error", "no store_unavailable error"
    assert shown in unavailable[0]["error"], unavailable[0]
    names = [e["event"] for e in events]
    assert "store_recovered" in names
    # it lost the lock with the server, stood by instead of exiting, and led again
    assert names.count("leader_acquired") >= 2, names
    lost = next(e for e in events if e["event"] == "leadership_lost")
    assert lost["action"].startswith("standing by"), lost
    per_key: Counter[tuple[str, int]] = Counter(ids[e["operationId"]] for e in executions)
    assert all(n == 1 for n in per_key.values()), per_key
    per_name = Counter(name for name, _ in per_key.elements())
    wrong = {n: (per_name[n], exp.executions) for n, exp in scenario.expected.items()
             if per_name[n] != exp.executions}
    assert not wrong, wrong
    rows = status_of(folder, dsn)
    assert {n: rows[n]["state"] for n, exp in scenario.expected.items()
            if rows[n]["state"] not in exp.states} == {}
