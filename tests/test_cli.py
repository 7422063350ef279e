"""The ``reconciler`` command line end to end: ``run --once``, ``plan``, ``status``,
``history``, ``retry`` and ``demo`` as real subprocesses against the emulator, whose admin
lists prove every command ran exactly once.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from integration_support import (
    OTHER_SERVICE_NAME,
    SERVICE_ID,
    clone_emulator,
    executions,
    manifest,
    operations,
    parse_time,
    reconciler,
    run_daemon_once,
    run_once,
    running_emulator,
    status_json,
    write_manifest,
    write_manifests,
)

from reconciler.ailake.emulator import RunningEmulator
from reconciler.cli.demo import bundled_manifests
from reconciler.model.identity import operation_id
from reconciler.model.lifecycle import IntentState as S
from reconciler.source.loader import load_manifests


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with running_emulator() as emu:
        yield emu


def remove_state(state: Path) -> None:
    """Lose the state store: the database and its WAL files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)


def op_id(manifests: Path, name: str, attempt: int = 0) -> str:
    """The operation id of attempt ``attempt`` of manifest ``name`` (policy once)."""
    command = load_manifests(manifests).by_name[name]
    return operation_id(command.spec_hash(), attempt)


def plan_json(manifests: Path, state: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    done = reconciler("plan", "--manifests", manifests, "--state", state, "--output", "json",
                      *extra)
    assert done.returncode in (0, 2), done.stderr
    return done.returncode, json.loads(done.stdout)


def changed(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["action"], a["name"]) for a in document["actions"] if a["changes"]]


@pytest.fixture(scope="module")
def converged_template(tmp_path_factory: pytest.TempPathFactory,
                       ) -> Iterator[tuple[Path, Path, RunningEmulator]]:
    """Three manifests run to success once per module: (manifests, state, emulator)."""
    root = tmp_path_factory.mktemp("converged")
    manifests, state = root / "manifests", root / "state.db"
    write_manifests(manifests, [
        manifest("alpha", "quick", payload={"n": 1}),
        manifest("beta", "instant", service_name=OTHER_SERVICE_NAME, context={"by": "test"}),
        manifest("gamma", "quick", payload={"n": 3}),
    ])
    with running_emulator() as emu:
        done = run_once(manifests, emu.url, state)
        assert done.returncode == 0, done.stdout + done.stderr
        assert len(executions(emu.url)) == 3
        yield manifests, state, emu


@pytest.fixture
def converged(tmp_path: Path, converged_template: tuple[Path, Path, RunningEmulator],
              ) -> Iterator[tuple[Path, Path, RunningEmulator]]:
    """A private copy of the converged system: (manifests dir, state path, emulator)."""
    manifests, state, template = converged_template
    shutil.copytree(manifests, tmp_path / "manifests")
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{state}{suffix}").exists():
            shutil.copy2(f"{state}{suffix}", tmp_path / f"state.db{suffix}")
    with clone_emulator(template) as emu:
        yield tmp_path / "manifests", tmp_path / "state.db", emu


# ---------------------------------------------------------------------------- run --once


def test_run_once_converges_twelve_manifests_each_executed_exactly_once(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    docs = []
    for i in range(12):
        by_name = {"service_name": OTHER_SERVICE_NAME} if i % 3 == 0 else {}
        docs.append(manifest(f"cmd-{i:02d}", ("quick", "instant", "medium")[i % 3],
                             payload={"index": i}, **by_name))
    write_manifests(manifests, docs)

    done = run_once(manifests, emulator.url, state, "--max-per-service", "8")

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ran = executions(emulator.url)
    assert sorted(e["operationId"] for e in ran) == sorted(
        op_id(manifests, f"cmd-{i:02d}") for i in range(12))
    assert all(e["status"] == "succeeded" for e in ran)
    assert all(op["posts"] == 1 and op["executions"] == 1 for op in operations(emulator.url))
    rows = status_json(state)
    assert sorted(rows) == [f"cmd-{i:02d}" for i in range(12)]
    assert {r["state"] for r in rows.values()} == {S.IN_SYNC}
    assert all(r["attempts"] == 1 and r["error"] is None for r in rows.values())
    # with the manifests, the planner's view: in sync
    rows = status_json(state, "--manifests", str(manifests))
    assert {r["state"] for r in rows.values()} == {S.IN_SYNC}


async def test_run_once_again_after_convergence_executes_nothing(
        converged: tuple[Path, Path, RunningEmulator]) -> None:
    manifests, state, emu = converged
    code = await run_daemon_once(manifests, emu.url, state)
    assert code == 0
    assert len(executions(emu.url)) == 3


async def test_failing_command_retries_limit_times_then_stalls_and_retry_command_retries(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [
        manifest("doomed", "broken", retry={"limit": 2, "backoff": "200ms"}),
        manifest("fine", "instant"),
    ])

    code = await run_daemon_once(manifests, emulator.url, state)

    assert code == 1
    doomed = [e for e in executions(emulator.url) if e["command"] == "broken"]
    assert len(doomed) == 2 + 1
    assert [e["operationId"] for e in doomed] == [
        op_id(manifests, "doomed", attempt) for attempt in range(3)]
    rows = status_json(state, "--manifests", str(manifests))
    assert rows["doomed"]["state"] == S.STALLED
    assert rows["doomed"]["attempts"] == 3
    assert rows["doomed"]["error"]["title"]
    assert rows["fine"]["state"] == S.IN_SYNC

    # a run without a retry changes nothing: stalled stays stalled
    again = await run_daemon_once(manifests, emulator.url, state)
    assert again == 1
    assert len(executions(emulator.url)) == 4

    retry = reconciler("retry", "doomed", "--state", state)
    assert retry.returncode == 0, retry.stderr
    assert "retry scheduled" in retry.stdout

    after = await run_daemon_once(manifests, emulator.url, state)

    assert after == 1
    doomed = [e for e in executions(emulator.url) if e["command"] == "broken"]
    # a fresh retry budget: the next run tries again, limit + 1 more times, attempt ids
    # continuing where the first budget ended (never reusing an operation id)
    assert len(doomed) == 3 + 3
    assert len({e["operationId"] for e in doomed}) == 6
    assert status_json(state)["doomed"]["state"] == S.STALLED


def test_retry_of_a_name_with_nothing_to_retry_exits_1(
        converged: tuple[Path, Path, RunningEmulator], tmp_path: Path) -> None:
    _, state, _ = converged
    assert reconciler("retry", "alpha", "--state", state).returncode == 1
    assert reconciler("retry", "alpha", "--state", tmp_path / "none.db").returncode == 1


async def test_timeout_of_a_command_that_never_finishes_stalls_as_timed_out_without_retry(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [
        manifest("stuck", "hang", timeout="2s", retry={"limit": 3, "backoff": "100ms"}),
    ])

    started = time.monotonic()
    code = await run_daemon_once(manifests, emulator.url, state)

    assert code == 1
    assert time.monotonic() - started < 15
    assert len(executions(emulator.url)) == 1
    row = status_json(state, "--manifests", str(manifests))["stuck"]
    assert row["state"] == S.STALLED
    assert row["error"]["title"] == "Timed out"
    with sqlite3.connect(state) as db:
        statuses = [r[0] for r in db.execute("SELECT status FROM operations")]
    assert statuses == ["timed_out"]
    history = reconciler("history", "stuck", "--state", state, "--output", "json")
    assert [o["status"] for o in json.loads(history.stdout)] == ["timed_out"]


async def test_depends_on_dependents_start_only_after_their_dependencies_succeeded(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [
        manifest("provision", "medium"),
        manifest("migrate", "quick", dependsOn=["provision"]),
        manifest("seed", "quick", service_name=OTHER_SERVICE_NAME, dependsOn=["provision"]),
        manifest("index", "instant", dependsOn=["migrate", "seed"]),
        manifest("unrelated", "medium"),
    ])

    code = await run_daemon_once(manifests, emulator.url, state)

    assert code == 0
    names = {op_id(manifests, n): n for n in ("provision", "migrate", "seed", "index",
                                               "unrelated")}
    ran = {names[e["operationId"]]: e for e in executions(emulator.url)}
    assert len(ran) == 5 and all(e["status"] == "succeeded" for e in ran.values())
    for dependent, dependency in [("migrate", "provision"), ("seed", "provision"),
                                  ("index", "migrate"), ("index", "seed")]:
        assert parse_time(ran[dependent]["startedAt"]) >= parse_time(
            ran[dependency]["finishedAt"]), (dependent, dependency)


async def test_lost_state_store_is_rebuilt_by_probing_without_running_anything_again(
        converged: tuple[Path, Path, RunningEmulator]) -> None:
    manifests, state, emu = converged
    before = status_json(state)
    remove_state(state)

    code = await run_daemon_once(manifests, emu.url, state)

    assert code == 0
    assert len(executions(emu.url)) == 3
    assert all(op["posts"] == 1 for op in operations(emu.url))
    after = status_json(state)
    assert {n: (r["state"], r["operationId"]) for n, r in after.items()} == {
        n: (r["state"], r["operationId"]) for n, r in before.items()}


async def test_lost_state_store_of_a_stalled_command_adopts_every_attempt_and_stays_stalled(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [manifest("doomed", "broken", retry={"limit": 1,
                                                                     "backoff": "100ms"})])
    assert await run_daemon_once(manifests, emulator.url, state) == 1
    assert len(executions(emulator.url)) == 2
    remove_state(state)

    code = await run_daemon_once(manifests, emulator.url, state)

    assert code == 1
    assert len(executions(emulator.url)) == 2
    row = status_json(state)["doomed"]
    assert row["state"] == S.STALLED and row["attempts"] == 2


async def test_run_once_with_invalid_manifests_runs_the_valid_ones_and_exits_1(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [manifest("good", "quick")])
    (manifests / "bad.yaml").write_text("apiVersion: ailake.reconciler/v1\nkind: Nope\n")

    code = await run_daemon_once(manifests, emulator.url, state)

    assert code == 1
    assert [e["operationId"] for e in executions(emulator.url)] == [op_id(manifests, "good")]


def test_run_once_configured_only_through_environment_variables(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [manifest("from-env", "quick")])
    token_file = tmp_path / "token"
    token_file.write_text("unused-token\n")

    done = reconciler("run", env={
        "RECONCILER_MANIFESTS": str(manifests),
        "RECONCILER_API_URL": emulator.url,
        "RECONCILER_STATE": str(state),
        "RECONCILER_ONCE": "true",
        "RECONCILER_LISTEN": "",
        "RECONCILER_INTERVAL": "1s",
        "RECONCILER_MAX_IN_FLIGHT": "2",
        "RECONCILER_MAX_PER_SERVICE": "1",
        "RECONCILER_RATE_LIMIT": "0",
        "RECONCILER_GRACE_PERIOD": "5s",
        "RECONCILER_RETENTION": "3",
        "RECONCILER_TOKEN_FILE": str(token_file),
        "RECONCILER_LOG_LEVEL": "debug",
        "RECONCILER_LOG_FORMAT": "json",
    })

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert [e["operationId"] for e in executions(emulator.url)] == [
        op_id(manifests, "from-env")]
    assert status_json(state)["from-env"]["state"] == S.IN_SYNC
    assert "unused-token" not in done.stdout + done.stderr
    # status reads its store from the environment as well
    shown = reconciler("status", "--output", "json", env={"RECONCILER_STATE": str(state)})
    assert [r["name"] for r in json.loads(shown.stdout)] == ["from-env"]


# ---------------------------------------------------------------------------- plan


def test_plan_on_a_converged_system_exits_0_with_no_changes(
        converged: tuple[Path, Path, RunningEmulator]) -> None:
    manifests, state, emu = converged
    done = reconciler("plan", "--manifests", manifests, "--state", state, "--api-url", emu.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No changes" in done.stdout
    code, document = plan_json(manifests, state)
    assert code == 0 and document["changes"] == 0 and changed(document) == []
    assert {m["state"] for m in document["manifests"]} == {S.IN_SYNC}


def test_plan_after_a_payload_edit_exits_2_and_shows_exactly_that_submission(
        converged: tuple[Path, Path, RunningEmulator]) -> None:
    manifests, state, emu = converged
    write_manifest(manifests, manifest("alpha", "quick", payload={"n": 2}))

    code, document = plan_json(manifests, state)

    assert code == 2
    assert changed(document) == [("submit", "alpha")]
    submit = next(a for a in document["actions"] if a["changes"])
    assert submit["operationId"] == op_id(manifests, "alpha")
    text = reconciler("plan", "--manifests", manifests, "--state", state)
    assert text.returncode == 2
    assert "+ submit" in text.stdout and "alpha" in text.stdout
    assert "Plan: 1 to submit" in text.stdout
    assert len(executions(emu.url)) == 3  # nothing ran


def test_plan_with_invalid_manifests_exits_1(
        converged: tuple[Path, Path, RunningEmulator]) -> None:
    manifests, state, _ = converged
    (manifests / "broken.yaml").write_text(
        "apiVersion: ailake.reconciler/v1\nkind: ServiceCommand\nmetadata: {name: x}\n"
        "spec: {command: quick}\n")

    done = reconciler("plan", "--manifests", manifests, "--state", state)

    assert done.returncode == 1
    assert "broken.yaml" in done.stderr
    as_json = reconciler("plan", "--manifests", manifests, "--state", state, "-o", "json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["problems"]


def test_plan_never_creates_a_state_file(tmp_path: Path) -> None:
    manifests = write_manifests(tmp_path / "manifests", [manifest("alpha"), manifest("beta")])
    state = tmp_path / "store" / "state.db"

    code, document = plan_json(manifests, state)

    assert code == 2
    assert changed(document) == [("submit", "alpha"), ("submit", "beta")]
    assert not state.parent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifests"]


def test_plan_never_changes_an_existing_state_file(
        converged: tuple[Path, Path, RunningEmulator]) -> None:
    manifests, state, emu = converged
    write_manifest(manifests, manifest("alpha", "quick", payload={"n": 3}))
    write_manifest(manifests, manifest("delta", "quick"))
    (manifests / "gamma.yaml").unlink()
    before = state.read_bytes(), state.stat().st_mtime_ns
    with sqlite3.connect(state) as db:
        rows_before = db.execute("SELECT * FROM intents ORDER BY spec_hash").fetchall()

    code, document = plan_json(manifests, state, "--api-url", emu.url)

    assert code == 2
    assert sorted(changed(document)) == [("orphan", "gamma"), ("submit", "alpha"),
                                         ("submit", "delta")]
    assert (state.read_bytes(), state.stat().st_mtime_ns) == before
    with sqlite3.connect(state) as db:
        assert db.execute("SELECT * FROM intents ORDER BY spec_hash").fetchall() == rows_before
    assert len(executions(emu.url)) == 3


def test_plan_with_api_url_after_a_lost_store_reports_adopt_not_submit(
        converged: tuple[Path, Path, RunningEmulator]) -> None:
    manifests, state, emu = converged
    remove_state(state)
    write_manifest(manifests, manifest("delta", "quick"))

    code, document = plan_json(manifests, state, "--api-url", emu.url)

    assert code == 2
    assert sorted(changed(document)) == [("adopt", "alpha"), ("adopt", "beta"),
                                         ("adopt", "gamma"), ("submit", "delta")]
    found = {a["name"]: a.get("found") for a in document["actions"] if a["action"] == "adopt"}
    assert found == dict.fromkeys(("alpha", "beta", "gamma"), "succeeded")
    text = reconciler("plan", "--manifests", manifests, "--state", state, "--api-url", emu.url)
    assert text.returncode == 2
    assert "< adopt" in text.stdout
    assert not state.exists()
    assert len(executions(emu.url)) == 3


# ---------------------------------------------------------------------------- status, history


def test_status_prints_a_table_of_every_manifest(
        converged: tuple[Path, Path, RunningEmulator]) -> None:
    _, state, _ = converged
    done = reconciler("status", "--state", state)
    assert done.returncode == 0
    header, *lines = done.stdout.strip().splitlines()
    assert header.split()[:4] == ["NAME", "SERVICE", "COMMAND", "STATE"]
    assert [ln.split()[0] for ln in lines] == ["alpha", "beta", "gamma"]
    assert all(S.IN_SYNC in ln for ln in lines)
    assert OTHER_SERVICE_NAME in lines[1] and SERVICE_ID in lines[0]


def test_status_json_has_one_row_per_manifest(
        converged: tuple[Path, Path, RunningEmulator]) -> None:
    manifests, state, _ = converged
    rows = status_json(state, "--manifests", str(manifests))
    assert sorted(rows) == ["alpha", "beta", "gamma"]
    alpha = rows["alpha"]
    assert alpha["state"] == S.IN_SYNC and alpha["attempts"] == 1
    assert alpha["operationId"] == op_id(manifests, "alpha")
    assert alpha["command"] == "quick" and alpha["service"] == SERVICE_ID
    assert not any(k.startswith("_") for k in alpha)


def test_status_without_a_store_prints_nothing_recorded_and_creates_nothing(
        tmp_path: Path) -> None:
    state = tmp_path / "none.db"
    done = reconciler("status", "--state", state)
    assert done.returncode == 0 and "No intents recorded" in done.stdout
    assert json.loads(reconciler("status", "--state", state, "-o", "json").stdout) == []
    assert not state.exists()


async def test_history_lists_every_attempt_of_a_manifest(tmp_path: Path,
                                                   emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [manifest("flaky-one", "flaky", retry={"limit": 2,
                                                                       "backoff": "100ms"})])
    assert await run_daemon_once(manifests, emulator.url, state) == 0

    done = reconciler("history", "flaky-one", "--state", state)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["SPEC", "WINDOW", "ATTEMPT"]
    assert len(lines) == 1 + 2
    assert op_id(manifests, "flaky-one", 0) in lines[1] and "failed" in lines[1]
    assert op_id(manifests, "flaky-one", 1) in lines[2] and "succeeded" in lines[2]
    as_json = json.loads(reconciler("history", "flaky-one", "--state", state,
                                    "--output", "json").stdout)
    assert [(o["attempt"], o["status"]) for o in as_json] == [(0, "failed"), (1, "succeeded")]
    assert as_json[0]["error"]["title"]


async def test_history_spans_spec_changes(converged: tuple[Path, Path, RunningEmulator]) -> None:
    manifests, state, emu = converged
    write_manifest(manifests, manifest("alpha", "quick", payload={"n": 2}))
    assert await run_daemon_once(manifests, emu.url, state) == 0
    as_json = json.loads(reconciler("history", "alpha", "--state", state, "-o", "json").stdout)
    assert len(as_json) == 2 and len({o["specHash"] for o in as_json}) == 2


def test_history_of_an_unknown_name_exits_1(
        converged: tuple[Path, Path, RunningEmulator], tmp_path: Path) -> None:
    _, state, _ = converged
    done = reconciler("history", "nobody", "--state", state)
    assert done.returncode == 1
    assert "nobody" in done.stderr
    assert reconciler("history", "alpha", "--state", tmp_path / "none.db").returncode == 1
    assert not (tmp_path / "none.db").exists()


# ---------------------------------------------------------------------------- demo


def test_demo_once_converges_the_sample_manifests(tmp_path: Path) -> None:
    samples = bundled_manifests()
    names = sorted(c.name for c in load_manifests(samples).commands)
    assert len(names) >= 5

    started = time.monotonic()
    done = reconciler("demo", "--once", "--listen", "127.0.0.1:0",
                      "--state", tmp_path / "demo.db", timeout=60,
                      cwd=tmp_path)  # no ./manifests there: the bundled samples
    elapsed = time.monotonic() - started

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert elapsed < 30
    table = done.stdout.split("Converged in", 1)[1]
    header = next(ln for ln in table.splitlines() if ln.startswith("NAME"))
    assert "STATE" in header
    for name in names:
        assert any(ln.startswith(name + " ") for ln in table.splitlines()), name


def test_demo_interrupted_with_ctrl_c_prints_the_table_and_exits_130(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "demo", "--listen", "127.0.0.1:0",
         "--state", str(tmp_path / "demo.db")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:  # wait until the daemon is at work
            if "submitting" in line:
                break
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, out[-2000:] + err[-2000:]
    assert "Interrupted after" in out
    assert "Still reconciling" not in out
