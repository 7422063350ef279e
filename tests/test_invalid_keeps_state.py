"""Invalid manifests keep their state (DESIGN section 4, ``invalid``), with the directory
source and the in-process daemon against a real emulator:

- a manifest whose document fails validation keeps its last valid intent's record and state:
  nothing new is submitted, it is not orphaned, its ``command_failed``/``command_stalled``
  stay, and it shows as ``invalid`` with FILE:LINE and the message in ``/status``,
  ``reconciler status``, ``reconciler plan`` and the ``manifest_invalid{name,file}`` gauge;
- a file that cannot be parsed at all keeps every name it held at the last good load, and
  while it is broken nothing absent is orphaned;
- only a manifest absent from a source that loaded cleanly is orphaned;
- an empty source orphans nothing unless ``--allow-empty``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from integration_support import (
    daemon_settings,
    executions,
    manifest,
    reconciler,
    run_daemon_once,
    running_emulator,
    write_manifest,
)

from reconciler.ailake.emulator import RunningEmulator
from reconciler.model.lifecycle import IntentState as S
from reconciler.runtime.daemon import Daemon


@pytest.fixture
def emulator() -> RunningEmulator:
    with running_emulator() as emu:
        yield emu  # type: ignore[misc]


def live(state: Path) -> dict[str, str]:
    """Live (not retired) intents' statuses by name, straight from SQLite."""
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
        return dict(db.execute("SELECT name, status FROM intents WHERE retired IS NULL"))


def retired(state: Path) -> dict[str, str]:
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
        return dict(db.execute("SELECT name, retired FROM intents WHERE retired IS NOT NULL"))


class Served:
    """An in-process ``reconciler run`` (not ``--once``) and its HTTP surface."""

    def __init__(self, daemon: Daemon, url: str) -> None:
        self.daemon = daemon
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=5)

    async def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = (await self.http.get("/status")).json()
        return answer

    async def states(self) -> dict[str, str]:
        return {i["name"]: i["state"] for i in (await self.status())["intents"]}

    async def item(self, name: str) -> dict[str, Any]:
        return next(i for i in (await self.status())["intents"] if i["name"] == name)

    async def metric(self, metric: str, /, **labels: str) -> float | None:
        text = (await self.http.get("/metrics")).text
        for line in text.splitlines():
            match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
            if match is None or match.group(1) != f"ailake_reconciler_{metric}":
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(match.group(3))
        return None

    async def reload(self) -> None:
        """SIGHUP: a pass now, and wait for it (the plan is made after the load)."""
        passes = self.daemon.passes
        self.daemon.trigger("SIGHUP")
        await until(lambda: self.daemon.passes > passes, what="a pass after SIGHUP")


async def until(predicate: Callable[[], Any], *, timeout: float = 10,
                what: str = "condition") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def serving(manifests: Path, url: str, state: Path,
                  **overrides: Any) -> AsyncIterator[Served]:
    urls: list[str] = []
    settings = daemon_settings(manifests, url, state, once=False, listen="127.0.0.1:0",
                               interval=30.0, watch_period=0.2, **overrides)
    daemon = Daemon(settings, on_listening=urls.append)
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: urls or task.done(), what="the listener")
        served = Served(daemon, urls[0])
        await until(lambda: daemon.plan is not None, what="the first pass")
        yield served
        await served.http.aclose()
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)


def text(name: str, command: str = "instant", **spec: Any) -> str:
    return yaml.safe_dump(manifest(name, command, **spec), sort_keys=False)


async def test_a_typo_in_a_stalled_manifest_keeps_its_record_state_and_alerts(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    doomed = manifests / "team-a" / "doomed.yaml"
    good = text("doomed", "broken", retry={"limit": 0})
    doomed.parent.mkdir(parents=True)
    doomed.write_text(good)
    write_manifest(manifests, manifest("fine", "instant"))
    async with serving(manifests, emulator.url, state) as d:
        await until(lambda: d.states(), what="states")
        await until(lambda: _state(d, "doomed", S.STALLED), what="doomed stalled")
        labels = {"name": "doomed", "command": "broken"}
        assert await d.metric("command_stalled", **labels) == 1
        doomed.write_text(good.replace("  command: broken", "  command: 42"))
        await d.reload()
        item = await d.item("doomed")
        assert item["state"] == S.INVALID
        file = f"{manifests}/team-a/doomed.yaml"
        assert re.search(rf"{re.escape(file)}:\d+: doomed: spec\.command", item["reason"])
        assert item["attempts"] == 1 and item["operationId"]  # the record, as it was
        assert await d.metric("command_failed", **labels) == 1
        assert await d.metric("command_stalled", **labels) == 1
        assert await d.metric("manifest_invalid", name="doomed", file=file) == 1
        assert await d.metric("invalid_manifests") == 1
        assert await d.metric("intents", state="invalid") == 1
        assert live(state) == {"doomed": S.STALLED, "fine": S.IN_SYNC}  # not orphaned
        before = len(executions(emulator.url))
        await d.reload()
        assert len(executions(emulator.url)) == before  # nothing new sent

        # the CLI shows it too: status and plan (invalid, FILE:LINE, no orphan), exit 1
        status = await asyncio.to_thread(reconciler, "status", "--state", state,
                                         "--manifests", manifests, "--output", "json")
        rows = {r["name"]: r for r in json.loads(status.stdout)}
        assert rows["doomed"]["state"] == S.INVALID and file in rows["doomed"]["reason"]
        table = await asyncio.to_thread(reconciler, "status", "--state", state,
                                        "--manifests", manifests)
        assert re.search(r"doomed .* invalid .*doomed\.yaml:\d+", table.stdout), table.stdout
        planned = await asyncio.to_thread(reconciler, "plan", "--state", state,
                                          "--manifests", manifests)
        assert planned.returncode == 1, planned.stdout + planned.stderr
        assert "orphan" not in planned.stdout
        assert re.search(r"= invalid +doomed\n +invalid: .*doomed\.yaml:\d+", planned.stdout)
        assert "1 invalid" in planned.stdout
        document = json.loads((await asyncio.to_thread(
            reconciler, "plan", "--state", state, "--manifests", manifests,
            "--output", "json")).stdout)
        assert not [a for a in document["actions"] if a["name"] == "doomed"]
        assert {m["name"]: m["state"] for m in document["manifests"]}["doomed"] == S.INVALID

        # fixed, the same spec: stalled again, the invalid series vanishes
        doomed.write_text(good)
        await d.reload()
        assert (await d.item("doomed"))["state"] == S.STALLED
        assert await d.metric("manifest_invalid", name="doomed") is None
        assert await d.metric("command_stalled", **labels) == 1
    runs = [e for e in executions(emulator.url) if e["command"] == "broken"]
    assert len(runs) == 1


async def _state(d: Served, name: str, state: str) -> bool:
    return (await d.states()).get(name) == state


async def test_once_exits_1_while_a_manifest_is_invalid_and_changes_nothing(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    path = write_manifest(manifests, manifest("a", "instant"))
    assert await run_daemon_once(manifests, emulator.url, state) == 0
    path.write_text(path.read_text().replace("command: instant", "command: [instant]"))
    assert await run_daemon_once(manifests, emulator.url, state) == 1
    assert live(state) == {"a": S.IN_SYNC} and retired(state) == {}
    assert len(executions(emulator.url)) == 1


async def test_a_file_that_cannot_be_parsed_keeps_every_name_it_held(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    manifests.mkdir()
    shared = manifests / "shared.yaml"
    shared.write_text(text("x") + "---\n" + text("y"))
    alone = write_manifest(manifests, manifest("z", "instant"))
    async with serving(manifests, emulator.url, state) as d:
        await until(lambda: _all(d, {"x": S.IN_SYNC, "y": S.IN_SYNC, "z": S.IN_SYNC}),
                    what="in sync")
        shared.write_text("apiVersion: [unclosed\n")  # not YAML any more
        alone.unlink()  # absent, but the source does not load cleanly: kept
        await d.reload()
        document = await d.status()
        states = {i["name"]: (i["state"], i["reason"]) for i in document["intents"]}
        assert states["x"][0] == states["y"][0] == S.INVALID
        assert f"{manifests}/shared.yaml:1" in states["x"][1]
        assert states["z"][0] == S.IN_SYNC and "did not load cleanly" in states["z"][1]
        assert "did not load cleanly" in document["orphaningWithheld"]
        assert live(state) == {"x": S.IN_SYNC, "y": S.IN_SYNC, "z": S.IN_SYNC}
        for name in ("x", "y"):
            assert await d.metric("manifest_invalid", name=name,
                                  file=f"{manifests}/shared.yaml") == 1
        assert await d.metric("manifest_invalid", name="z") is None
        # the file parses again: the source is clean, only now is z orphaned
        shared.write_text(text("x") + "---\n" + text("y"))
        await d.reload()
        assert await d.states() == {"x": S.IN_SYNC, "y": S.IN_SYNC, "z": S.ORPHANED}
        assert (await d.status())["orphaningWithheld"] is None
    assert retired(state) == {"z": "orphaned"}
    assert len(executions(emulator.url)) == 3


async def _all(d: Served, expected: dict[str, str]) -> bool:
    return await d.states() == expected


async def test_an_invalid_manifest_never_valid_before_shows_invalid_and_sends_nothing(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifest(manifests, manifest("good", "instant"))
    bad = manifest("bad", "instant")
    bad["spec"]["timeout"] = "soon"
    write_manifest(manifests, bad)
    async with serving(manifests, emulator.url, state) as d:
        await until(lambda: _state(d, "good", S.IN_SYNC), what="good in sync")
        item = await d.item("bad")
        assert item["state"] == S.INVALID and "bad.yaml:" in item["reason"]
        assert item["attempts"] == 0 and item["operationId"] is None
        assert await d.metric("manifest_invalid", name="bad") == 1
    assert [e["command"] for e in executions(emulator.url)] == ["instant"]


async def test_an_empty_source_orphans_nothing_unless_allow_empty(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    paths = [write_manifest(manifests, manifest(n, "instant", payload={"n": n}))
             for n in ("one", "two")]
    async with serving(manifests, emulator.url, state) as d:
        await until(lambda: _all(d, {"one": S.IN_SYNC, "two": S.IN_SYNC}), what="in sync")
        for path in paths:
            path.unlink()
        (manifests / "README.md").write_text("moved elsewhere\n")
        await d.reload()
        document = await d.status()
        assert {i["name"]: i["state"] for i in document["intents"]} == {
            "one": S.IN_SYNC, "two": S.IN_SYNC}
        assert "--allow-empty" in document["orphaningWithheld"]
        assert await d.metric("source_empty_withheld") == 1
        await d.reload()  # and again: the memory of the last good tree stays
        assert await d.metric("source_empty_withheld") == 1
    # a restart: the store's live names stand for the last good tree, load after load
    async with serving(manifests, emulator.url, state) as d:
        for _ in range(2):
            await d.reload()
            assert await d.states() == {"one": S.IN_SYNC, "two": S.IN_SYNC}
            assert await d.metric("source_empty_withheld") == 1
    # --once exits 1
    assert await run_daemon_once(manifests, emulator.url, state) == 1
    assert live(state) == {"one": S.IN_SYNC, "two": S.IN_SYNC}
    planned = await asyncio.to_thread(reconciler, "plan", "--state", state,
                                      "--manifests", manifests)
    assert planned.returncode == 1 and "orphaning withheld" in planned.stderr
    assert "orphan " not in planned.stdout
    allowed = await asyncio.to_thread(reconciler, "plan", "--state", state,
                                      "--manifests", manifests, "--allow-empty")
    assert allowed.returncode == 2 and allowed.stdout.count("- orphan ") == 2
    assert await run_daemon_once(manifests, emulator.url, state, allow_empty=True) == 0
    assert live(state) == {} and retired(state) == {"one": "orphaned", "two": "orphaned"}
    assert len(executions(emulator.url)) == 2
