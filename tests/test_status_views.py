"""One status builder (:func:`reconciler.observe.status.status_rows`) behind the daemon's
``/status``, ``reconciler status`` (table and ``-o json``) and the demo's table.

First the builder itself (pure: records and views in, rows out), with one test for every
place where ``/status`` and ``reconciler status`` used to disagree; then a LIVE daemon
(``reconciler run`` as a subprocess against the emulator) whose manifests end in sync,
failed (retrying after a long backoff), stalled, pending, waiting (on a failed, a pending
and a suspended dependency), blocked by a stalled dependency, suspended and orphaned: its
``/status`` and the real CLI's ``status -o json`` on the same state file agree on every
manifest.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import observability_support as obs
from integration_support import (
    manifest,
    run_daemon_once,
    running_emulator,
    status_json,
    write_manifests,
)

from reconciler.ailake.client import ClientSettings
from reconciler.cli.render import status_json as render_status_json
from reconciler.cli.render import status_table
from reconciler.model.lifecycle import IntentState
from reconciler.model.records import IntentRecord
from reconciler.observe.status import StatusRow, status_document, status_item, status_rows
from reconciler.planning.planner import View
from reconciler.runtime import serving
from reconciler.runtime.daemon import Daemon, DaemonSettings
from reconciler.store.sqlite import Store

NOW = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
S = IntentState

#: the field names (and order) of each rendering, as they have always been
STATUS_ITEM_KEYS = ["name", "state", "reason", "service", "command", "specHash", "attempts",
                    "operationId", "window", "error", "revision", "updatedAt"]
CLI_ROW_KEYS = ["name", "service", "command", "state", "reason", "attempts", "operationId",
                "window", "lastChange", "error"]


def record(name: str, status: str, *, spec_hash: str | None = None,
           retired: str | None = None, attempts: int = 1, at: datetime = NOW,
           error: dict[str, Any] | None = None) -> IntentRecord:
    """A recorded intent; fields these tests do not care about are None."""
    values: dict[str, Any] = {f.name: None for f in dataclasses.fields(IntentRecord)}
    values.update(
        spec_hash=spec_hash or f"h-{name}", name=name, service="svc-1", command="reindex",
        window="", canonical="{}", status=status, attempts=attempts, retry_base=0,
        operation_id=f"op-{name}-{attempts - 1}", service_id="svc-1", poll_count=0,
        last_error=error, retired=retired, revision="rev-1", created_at=at, updated_at=at,
    )
    return IntentRecord(**values)


def view(name: str, state: IntentState, reason: str = "", *,
         spec_hash: str | None = None) -> View:
    return View(name, state, reason, spec_hash or f"h-{name}")


def by_name(rows: list[StatusRow]) -> dict[str, StatusRow]:
    return {r.name: r for r in rows}


# ---------------------------------------------------------------------------- the builder


def test_one_row_per_name_of_the_records_and_the_views_sorted_with_each_rendering() -> None:
    latest = {"beta": record("beta", S.FAILED, attempts=2,
                             error={"title": "Command failed", "detail": "disk full"})}
    views = [view("beta", S.FAILED, "waiting to retry"), view("alpha", S.WAITING, "deps")]

    rows = status_rows(latest, views)

    assert [r.name for r in rows] == ["alpha", "beta"]
    alpha, beta = rows
    assert (alpha.state, alpha.reason, alpha.attempts, alpha.operation_id) == (
        S.WAITING, "deps", 0, None)
    assert alpha.service is None and alpha.window is None and alpha.updated_at is None
    assert (beta.state, beta.reason, beta.attempts, beta.operation_id) == (
        S.FAILED, "waiting to retry", 2, "op-beta-1")
    # the renderings keep their field names, order and empty values as they always had
    item = status_item(alpha)
    assert list(item) == STATUS_ITEM_KEYS
    assert (item["service"], item["command"], item["window"]) == (None, None, None)
    cli = render_status_json(rows)
    assert [list(r) for r in cli] == [CLI_ROW_KEYS, CLI_ROW_KEYS]
    assert (cli[0]["service"], cli[0]["command"], cli[0]["window"]) == ("", "", "")
    assert cli[1]["lastChange"] == status_item(beta)["updatedAt"] == NOW.isoformat()
    assert cli[1]["error"] == status_item(beta)["error"] == {"title": "Command failed",
                                                             "detail": "disk full"}
    table = status_table(rows).splitlines()
    assert table[0].split()[:4] == ["NAME", "SERVICE", "COMMAND", "STATE"]
    assert table[2].startswith("beta") and "Command failed: disk full" in table[2]
    assert table[1].startswith("alpha") and table[1].endswith("deps")
    document = status_document(rows, revision="rev-1", problems=["a.yaml:3: x: bad"])
    assert list(document) == ["version", "revision", "invalidManifests", "intents"]
    assert document["invalidManifests"] == ["a.yaml:3: x: bad"]


def test_a_changed_spec_not_recorded_yet_shows_no_operation_of_the_previous_spec() -> None:
    latest = {"alpha": record("alpha", S.IN_SYNC, spec_hash="h-old")}
    [row] = status_rows(latest, [view("alpha", S.WAITING, "deps", spec_hash="h-new")])
    assert (row.state, row.spec_hash, row.attempts, row.operation_id) == (
        S.WAITING, "h-new", 0, None)
    assert row.service == "svc-1"  # the manifest's service is still that of its record


# ------------------------------------------------- where /status and `status` disagreed


async def test_status_before_the_first_pass_shows_recorded_states_not_orphaned(
        tmp_path: Path) -> None:
    """Behaviour change of ``/status``: before the daemon's first successful pass (no plan
    yet, e.g. while the API is down) every recorded manifest used to show ``orphaned``
    with no attempts; it now shows its recorded state and last operation, as
    ``reconciler status`` without ``--manifests`` does."""
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [manifest("fine", "instant"),
                                manifest("doomed", "broken", retry={"limit": 0})])
    with running_emulator() as emu:
        assert await run_daemon_once(manifests, emu.url, state) == 1
        daemon = Daemon(DaemonSettings(manifests=manifests,
                                       client=ClientSettings(base_url=emu.url),
                                       state=str(state), listen=None))
    daemon.store = Store(str(state))
    try:
        assert daemon.plan is None
        items = {i["name"]: i for i in serving.status_document(daemon)["intents"]}
    finally:
        daemon.store.close()
    assert items["doomed"]["state"] == S.STALLED
    assert items["fine"]["state"] == status_json(state)["fine"]["state"]
    for item in items.values():
        assert item["attempts"] == 1 and item["operationId"], item
        assert item["updatedAt"] and item["revision"], item


def test_a_retired_record_without_a_view_shows_its_last_operation() -> None:
    """Behaviour change of ``/status``: a removed manifest whose record was retired (the
    plan has no view of it) used to show ``orphaned`` with 0 attempts and no operation,
    while the same manifest showed both while it was being orphaned; it now shows its last
    operation, as ``reconciler status`` did."""
    latest = {"gone": record("gone", S.IN_SYNC, retired="orphaned", attempts=2)}
    row = by_name(status_rows(latest, [view("other", S.IN_SYNC)]))["gone"]
    assert (row.state, row.attempts, row.operation_id, row.spec_hash) == (
        S.ORPHANED, 2, "op-gone-1", "h-gone")
    item = status_item(row)
    assert item["attempts"] == 2 and item["operationId"] == "op-gone-1"
    assert item["updatedAt"] == NOW.isoformat() and item["revision"] == "rev-1"


def test_a_record_newer_than_the_plan_shows_its_recorded_state() -> None:
    """Behaviour change of ``/status``: a record the plan does not know and that is not
    retired (recorded after the plan was made: a manifest added while a pass runs) used
    to show ``orphaned``; it now shows the state it was recorded in."""
    latest = {"new": record("new", S.SUBMITTING, attempts=1)}
    row = by_name(status_rows(latest, [view("old", S.IN_SYNC)]))["new"]
    assert (row.state, row.attempts, row.operation_id) == (S.SUBMITTING, 1, "op-new-0")


def test_a_superseded_record_of_a_removed_manifest_is_orphaned_once_the_plan_is_known(
        ) -> None:
    """Behaviour change of ``reconciler status --manifests`` (and the demo's table): the
    latest record of a manifest that is no longer loaded, retired as ``superseded`` (its
    spec had changed before it was removed), used to show ``superseded``; the manifest is
    gone, so it shows ``orphaned``, as ``/status`` did. Without a plan (no
    ``--manifests``) a retired record still shows how it was retired."""
    latest = {"gone": record("gone", S.IN_SYNC, retired="superseded")}
    [row] = status_rows(latest, [])
    assert row.state == S.ORPHANED
    [unplanned] = status_rows(latest, None)
    assert unplanned.state == "superseded"


# ---------------------------------------------------------------------------- a live daemon


def _live_manifests(directory: Path) -> Path:
    """Manifests that end in every state a manifest can stand in."""
    return write_manifests(directory, [
        manifest("synced", "instant"),
        manifest("retrying", "broken", timeout="24h",
                 retry={"limit": 3, "backoff": "1h", "maxBackoff": "1h"}),
        manifest("doomed", "broken", retry={"limit": 0}),
        manifest("after-doomed", "instant", dependsOn=["doomed"]),
        manifest("after-retrying", "instant", dependsOn=["retrying"]),
        manifest("hanging", "hang", payload={"h": 1}),
        manifest("after-hanging", "instant", dependsOn=["hanging"]),
        manifest("paused", "instant", payload={"p": 1}, suspend=True),
        manifest("after-paused", "instant", payload={"a": 1}, dependsOn=["paused"]),
        manifest("removed", "instant", payload={"r": 1}),
    ])


EXPECTED: dict[str, IntentState] = {
    "synced": S.IN_SYNC, "retrying": S.FAILED, "doomed": S.STALLED,
    "after-doomed": S.STALLED, "after-retrying": S.WAITING, "hanging": S.PENDING,
    "after-hanging": S.WAITING, "paused": S.SUSPENDED, "after-paused": S.WAITING,
    "removed": S.IN_SYNC,
}


def _status(url: str) -> dict[str, dict[str, Any]]:
    answer = httpx.get(url + "/status", timeout=5)
    answer.raise_for_status()
    return {i["name"]: i for i in answer.json()["intents"]}


def _states(url: str) -> dict[str, str]:
    return {name: item["state"] for name, item in _status(url).items()}


def test_a_live_daemons_status_and_the_cli_agree_on_every_manifest(tmp_path: Path) -> None:
    manifests = _live_manifests(tmp_path / "manifests")
    with running_emulator() as emu:
        daemon = obs.start_daemon(tmp_path / "daemon", manifests=manifests, api_url=emu.url,
                                  env=obs.daemon_env(), args=["--log-format", "json"])
        state: Path = daemon.extra["state"]
        try:
            obs.wait_for(lambda: _states(daemon.url) == EXPECTED, timeout=60,
                         what=f"every manifest in its state {EXPECTED}",
                         diagnose=lambda: f"{_states(daemon.url)}\n{daemon.tail()}")
            (manifests / "removed.yaml").unlink()
            obs.wait_for(lambda: _states(daemon.url).get("removed") == S.ORPHANED,
                         timeout=30, what="the removed manifest to be orphaned",
                         diagnose=daemon.tail)
            served = _status(daemon.url)
            planned = status_json(state, "--manifests", str(manifests))
            recorded = status_json(state)
        finally:
            daemon.stop()

    expected = {**EXPECTED, "removed": S.ORPHANED}
    assert {n: i["state"] for n, i in served.items()} == expected
    assert {n: r["state"] for n, r in planned.items()} == expected
    for name, item in served.items():
        row = planned[name]
        for key in ("reason", "attempts", "operationId", "error"):
            assert item[key] == row[key], (name, key, item[key], row[key])
        assert (item["service"] or "", item["command"] or "") == (row["service"],
                                                                  row["command"]), name
    # the orphaned manifest's record was retired: /status still shows its operation
    assert served["removed"]["attempts"] == 1 and served["removed"]["operationId"]
    assert served["retrying"]["error"]["title"] and served["retrying"]["attempts"] == 1
    assert "stalled" in served["after-doomed"]["reason"]
    # without the manifests the CLI shows the recorded states: the same for every
    # manifest ever submitted
    assert set(recorded) == {"synced", "retrying", "doomed", "hanging", "removed"}
    for name, row in recorded.items():
        assert row["state"] == served[name]["state"], (name, row["state"])
        assert row["operationId"] == served[name]["operationId"], name


async def test_status_rows_of_a_live_store_match_the_served_document(tmp_path: Path) -> None:
    """The in-process daemon's ``status_document`` is :func:`status_document` of
    :func:`status_rows` of its store and plan: nothing else is added or dropped."""
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [manifest("one", "instant"),
                                manifest("two", "instant", dependsOn=["one"]),
                                manifest("off", "instant", payload={"o": 1}, suspend=True)])
    with running_emulator() as emu:
        settings = DaemonSettings(manifests=manifests, client=ClientSettings(base_url=emu.url),
                                  state=str(state), listen=None, once=True, interval=1.0)
        daemon = Daemon(settings)
        assert await asyncio.wait_for(daemon.run(), 30) == 0
    assert daemon.plan is not None and daemon.load is not None
    with Store(str(state)) as store:
        daemon.store = store
        served = serving.status_document(daemon)
        rows = status_rows(store.latest_by_name(), daemon.plan.views)
    assert served == status_document(rows, revision=daemon.load.revision)
    assert {i["name"]: i["state"] for i in served["intents"]} == {
        "one": S.IN_SYNC, "two": S.IN_SYNC, "off": S.SUSPENDED}
