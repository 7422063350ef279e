"""The ``reconciler`` command line end to end: ``run --once``, ``plan``, ``status``,
``history``, ``retry`` and ``demo`` as real subprocesses against the emulator, whose admin
lists prove every command ran exactly once.
"""

from __future__ import annotations

import json
import os
import re
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
import yaml
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
    wait_for,
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


def test_status_without_a_store_says_none_is_there_exits_1_and_creates_nothing(
        tmp_path: Path) -> None:
    """Behaviour change: it used to list every manifest as submitting or waiting, with
    blank columns, and exit 0."""
    state = tmp_path / "none.db"
    manifests = write_manifests(tmp_path / "manifests", [manifest("alpha")])
    for extra in ((), ("--manifests", str(manifests)), ("-o", "json")):
        done = reconciler("status", "--state", state, *extra)
        assert done.returncode == 1, extra
        assert done.stdout == ""
        assert done.stderr.startswith(f"reconciler: no state store at {state} ")
        assert "RECONCILER_STATE" in done.stderr
    assert reconciler("history", "alpha", "--state", state).returncode == 1
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
    assert lines[0].split() == ["SPEC", "WINDOW", "ATTEMPT", "OPERATION", "SUBMITTED",
                                "FINISHED", "OUTCOME", "REVISION", "ERROR"]
    assert len(lines) == 1 + 2
    revision = load_manifests(manifests).revision
    for line, n, outcome in ((lines[1], 1, "failed"), (lines[2], 2, "succeeded")):
        assert line.split()[2] == str(n)  # attempts are counted from 1, as everywhere
        assert op_id(manifests, "flaky-one", n - 1) in line and outcome in line
        assert revision in line
    as_json = json.loads(reconciler("history", "flaky-one", "--state", state,
                                    "--output", "json").stdout)
    # 1-based like the tables and the logs; the 0-based index the id is made of beside
    assert [(o["attempt"], o["attemptIndex"], o["outcome"]) for o in as_json] == [
        (1, 0, "failed"), (2, 1, "succeeded")]
    assert [o["status"] for o in as_json] == ["failed", "succeeded"]
    assert {o["revision"] for o in as_json} == {revision}
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
    # attempts are counted from 1, as in every table and log line: the sample that fails
    # twice succeeds on its attempt 3
    assert "attempt 1, operation" in done.stdout and "attempt 0" not in done.stdout
    assert "attempt 3, operation" in done.stdout
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


# ---------------------------------------------------------------------------- --git-url


def _git_remote(tmp_path: Path) -> Any:
    from git_support import Remote

    remote = Remote(tmp_path / "srv")
    docs = {f"manifests/{n}.yaml": yaml.safe_dump(manifest(n, "instant", payload={"n": n}))
            for n in ("alpha", "beta")}
    remote.commit(docs, "first")
    return remote


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git CLI")
def test_plan_and_status_follow_a_git_url_into_a_temporary_cache_changing_nothing(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    remote = _git_remote(tmp_path)
    state = tmp_path / "run" / "state.db"
    source = ("--git-url", remote.url, "--git-path", "manifests")
    done = reconciler("plan", *source, "--state", state, "-o", "json")
    assert done.returncode == 2, done.stderr
    document = json.loads(done.stdout)
    assert changed(document) == [("submit", "alpha"), ("submit", "beta")]
    assert document["revision"] == remote.head() and document["orphaningWithheld"] is None
    assert not state.parent.exists()  # no state file, no git cache beside it
    ran = reconciler("run", "--once", *source, "--api-url", emulator.url, "--state", state,
                     "--listen", "", "--interval", "1s", "--log-format", "json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (state.parent / ".reconciler-git").is_dir()  # run keeps its cache there
    # a typo in one manifest, pushed: status and plan show it invalid, orphan nothing
    broken = yaml.safe_dump(manifest("beta", "instant", payload={"n": "beta"})).replace(
        "command: instant", "command: {}")
    remote.commit({"manifests/beta.yaml": broken}, "typo")
    rows = {r["name"]: r for r in json.loads(reconciler(
        "status", *source, "--state", state, "-o", "json").stdout)}
    assert rows["alpha"]["state"] == S.IN_SYNC
    assert rows["beta"]["state"] == S.INVALID
    assert re.search(r"manifests/beta\.yaml:\d+: beta: ", rows["beta"]["reason"])
    planned = reconciler("plan", *source, "--state", state)
    assert planned.returncode == 1 and "manifests/beta.yaml:" in planned.stderr
    assert "orphan" not in planned.stdout and "= invalid  beta" in planned.stdout
    # everything deleted: nothing proposed for orphaning (without --allow-empty)
    remote.commit({"manifests/alpha.yaml": None, "manifests/beta.yaml": None,
                   "manifests/README.md": "empty\n"}, "empty")
    planned = reconciler("plan", *source, "--state", state, "-o", "json")
    assert planned.returncode == 1
    document = json.loads(planned.stdout)
    assert changed(document) == [] and "--allow-empty" in document["orphaningWithheld"]
    allowed = reconciler("plan", *source, "--state", state, "-o", "json", "--allow-empty")
    assert allowed.returncode == 2
    assert changed(json.loads(allowed.stdout)) == [("orphan", "alpha"), ("orphan", "beta")]
    assert len(executions(emulator.url)) == 2


def test_plan_of_an_unreachable_git_url_exits_1_without_a_traceback(tmp_path: Path) -> None:
    done = reconciler("plan", "--git-url", (tmp_path / "missing.git").as_uri(),
                      "--state", tmp_path / "state.db")
    assert done.returncode == 1
    assert "reconciler: error:" in done.stderr and "Traceback" not in done.stderr


def test_validate_given_a_git_url_says_use_git_url() -> None:
    done = reconciler("validate", "https://example.invalid/team/manifests.git")
    assert done.returncode == 1
    assert "use --git-url" in done.stderr and "Traceback" not in done.stderr


# ------------------------------------------------------------------ plans that show the change


def test_plan_of_a_changed_spec_lists_each_changed_field_old_and_new(
        converged: tuple[Path, Path, RunningEmulator]) -> None:
    manifests, state, emu = converged
    write_manifest(manifests, manifest("alpha", "quick", payload={"n": 2, "tables": ["o"]},
                                       context={"by": "me"}))

    text = reconciler("plan", "--manifests", manifests, "--state", state)

    assert text.returncode == 2, text.stderr
    block = text.stdout.split("+ submit   alpha", 1)[1].split("\n\n", 1)[0]
    assert block.splitlines()[1:] == [
        "      new intent; the spec changed since its last run:",
        '        ~ context: null → {"by": "me"}',
        "        ~ payload.n: 1 → 2",
        '        + payload.tables: ["o"]',
    ]
    code, document = plan_json(manifests, state)
    assert code == 2
    [submit] = [a for a in document["actions"] if a["action"] == "submit"]
    assert submit["specChanges"] == [
        {"path": "context", "change": "changed", "old": None, "new": {"by": "me"}},
        {"path": "payload.n", "change": "changed", "old": 1, "new": 2},
        {"path": "payload.tables", "change": "added", "old": None, "new": ["o"]},
    ]
    assert (submit["attempt"], submit["attemptIndex"]) == (1, 0)
    assert document["standing"]["in_sync"] == ["beta", "gamma"]
    assert len(executions(emu.url)) == 3


def test_plan_with_an_api_url_ending_in_api_v1_explains_the_extra_path(
        converged: tuple[Path, Path, RunningEmulator]) -> None:
    """Behaviour change: it used to plan 'submit' for operations that exist (every lookup
    of ``/api/v1/api/v1/...`` answered 404)."""
    manifests, state, emu = converged
    done = reconciler("plan", "--manifests", manifests, "--state", state,
                      "--api-url", emu.url + "/api/v1")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "is not the organisation's root URL" in done.stderr
    assert f"use --api-url {emu.url}" in done.stderr


def test_plan_with_an_unreachable_api_fails_in_seconds_naming_host_and_port(
        converged: tuple[Path, Path, RunningEmulator]) -> None:
    import socket

    manifests, state, _ = converged
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    done = reconciler("plan", "--manifests", manifests, "--state", state,
                      "--api-url", f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < 10
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert f"cannot connect to 127.0.0.1:{port}" in line and "Traceback" not in line


def _live_manifests(directory: Path) -> Path:
    return write_manifests(directory, [
        manifest("synced", "instant"),
        manifest("hanging", "hang", timeout="1h"),
        manifest("after-hanging", "instant", dependsOn=["hanging"]),
        manifest("doomed", "broken", retry={"limit": 0}),
        manifest("retrying", "broken", timeout="24h",
                 retry={"limit": 3, "backoff": "1h", "maxBackoff": "1h"}),
    ])


LIVE = {"synced": S.IN_SYNC, "hanging": S.PENDING, "after-hanging": S.WAITING,
        "doomed": S.STALLED, "retrying": S.FAILED}


def _sign(body: bytes, secret: str) -> str:
    import hashlib
    import hmac

    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_a_live_daemon_plan_status_and_its_log_name_every_state_and_the_progress(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    """One daemon whose manifests end in sync, pending, waiting, stalled and failed:
    ``plan`` names each (a pending operation used to be counted nowhere and a stalled
    manifest not named), ``status`` shows the pending one's elapsed time and deadline and
    every row's revision, and SIGHUP and the webhook each log a line when received."""
    import httpx
    from observability_support import daemon_env, start_daemon

    manifests = _live_manifests(tmp_path / "manifests")
    secret = "hook-secret-for-the-test"
    daemon = start_daemon(tmp_path / "daemon", manifests=manifests, api_url=emulator.url,
                          env=daemon_env(RECONCILER_WEBHOOK_SECRET=secret),
                          args=["--log-format", "json"], interval="30s")
    state: Path = daemon.extra["state"]
    try:
        wait_for(lambda: {n: r["state"] for n, r in status_json(
            state, "--manifests", str(manifests)).items()} == LIVE, timeout=60,
            what=f"the manifests in {LIVE}")
        planned = reconciler("plan", "--manifests", manifests, "--state", state)
        as_json = plan_json(manifests, state)[1]
        shown = reconciler("status", "--manifests", manifests, "--state", state)
        rows = status_json(state, "--manifests", str(manifests))
        daemon.popen.send_signal(signal.SIGHUP)
        body = b'{"ref": "refs/heads/main"}'
        hooked = httpx.post(daemon.url + "/hooks/reconcile", content=body, timeout=5,
                            headers={"x-hub-signature-256": _sign(body, secret),
                                     "x-github-delivery": "delivery-1"})
        assert hooked.status_code == 202

        def requested() -> set[str]:
            return {e.get("trigger", "") for e in daemon.json_lines()
                    if e["event"] == "reconcile_requested"}

        wait_for(lambda: requested() == {"SIGHUP", "webhook"}, timeout=10,
                 what="a reconcile_requested line per trigger")
    finally:
        daemon.stop()

    assert planned.returncode == 0, planned.stdout + planned.stderr  # nothing to change
    hanging_op = rows["hanging"]["operationId"]
    lines = planned.stdout.splitlines()
    assert any(ln.startswith(f"  . pending  hanging [{hanging_op}]: running ")
               and "attempt 1, deadline in " in ln for ln in lines), planned.stdout
    assert "  . waiting  after-hanging: waiting for dependency 'hanging' (pending)" in lines
    assert any(ln.startswith("  ! stalled  doomed: ") for ln in lines)
    assert any(ln.startswith("  ! failed   retrying: attempt 2 after backoff (at ")
               for ln in lines)
    assert lines[-1] == ("No changes. 1 in sync, 1 in flight (hanging), 1 waiting "
                         "(after-hanging), 1 failed (retrying), 1 stalled (doomed).")
    assert as_json["standing"] == {
        "in_sync": ["synced"], "in_flight": ["hanging"], "waiting": ["after-hanging"],
        "failed": ["retrying"], "stalled": ["doomed"], "lost": [], "suspended": [],
        "invalid": [], "orphaned": []}
    revision = load_manifests(manifests).revision
    header, *table = shown.stdout.splitlines()
    assert header.split()[-2:] == ["REVISION", "DETAIL"]
    hanging_line = next(ln for ln in table if ln.startswith("hanging "))
    assert revision in hanging_line
    assert re.search(r"running \d+s, attempt 1, deadline in (59m|1h)", hanging_line)
    progress = rows["hanging"]["progress"]
    assert progress["attempt"] == 1 and 0 <= progress["elapsedSeconds"] < 120
    assert 3480 < progress["deadlineInSeconds"] <= 3600
    assert progress["startedAt"] and progress["deadline"]
    assert rows["synced"]["progress"] is None
    assert {r["revision"] for n, r in rows.items() if n != "after-hanging"} == {revision}
    assert rows["after-hanging"]["revision"] is None


async def test_the_daemon_logs_still_pending_while_an_operation_runs(
        tmp_path: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from integration_support import daemon_settings
    from structlog.testing import capture_logs

    from reconciler.runtime import daemon as daemon_module

    monkeypatch.setattr(daemon_module, "PROGRESS_EVERY", 0.5)
    manifests = write_manifests(tmp_path / "m", [manifest("hanging", "hang", timeout="1h")])
    daemon = daemon_module.Daemon(daemon_settings(manifests, emulator.url, tmp_path / "s.db",
                                                  once=False))
    with capture_logs() as events:
        task = asyncio.create_task(daemon.run())
        try:
            for _ in range(200):
                if sum(e["event"] == "still_pending" for e in events) >= 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 15)
    lines = [e for e in events if e["event"] == "still_pending"]
    assert len(lines) >= 2, [e["event"] for e in events]
    first = lines[0]
    assert (first["name"], first["attempt"], first["operation_id"]) == (
        "hanging", 1, op_id(manifests, "hanging"))
    assert first["message"].startswith("still pending, ")
    assert re.fullmatch(r"still pending, \d+s elapsed, deadline in (59m|1h)", first["message"])
    assert 3500 < first["deadline_in"] <= 3600


# ------------------------------------------------------------------ flags, variables


COMMANDS_WITH_VARIABLES = ("run", "check", "plan", "validate", "status", "history", "retry")


def _env_value(action: Any) -> tuple[str, Any]:
    """A value for the flag's variable, and what the parsed argument must then be."""
    if action.const is True and action.default in (False, None):
        return "true", True
    if action.choices:
        choice = next(c for c in action.choices if c != action.default)
        return str(choice), choice
    kind = getattr(action.type, "__name__", "")
    if kind == "_seconds":
        return "7s", 7.0
    if kind == "_positive_int":
        return "7", 7
    if action.type is float:
        return "7", 7.0
    if kind == "_rate_limit":
        return "7", "7"
    if kind == "_output_kind":
        return "json", "json"
    return "/from/the/environment", "/from/the/environment"


@pytest.mark.parametrize("command", COMMANDS_WITH_VARIABLES)
def test_every_flag_reads_its_reconciler_variable(command: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """README: every flag of these commands reads ``RECONCILER_<FLAG>`` (behaviour change:
    ``RECONCILER_OUTPUT`` did not)."""
    import argparse

    from reconciler.cli.main import build_parser

    for key in [k for k in os.environ if k.startswith("RECONCILER_")]:
        monkeypatch.delenv(key)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = [a for a in sub.choices[command]._actions
             if any(f.startswith("--") for f in a.option_strings) and a.dest != "help"]
    assert flags
    positional = {"validate": ["p"], "history": ["x"], "retry": ["x"]}.get(command, [])
    for action in flags:
        flag = next(f for f in action.option_strings if f.startswith("--"))
        variable = "RECONCILER_" + flag[2:].upper().replace("-", "_")
        value, expected = _env_value(action)
        assert variable in (action.help or ""), f"{command} {flag}: --help names no variable"
        monkeypatch.setenv(variable, value)
        if command == "run" and variable != "RECONCILER_API_URL":
            monkeypatch.setenv("RECONCILER_API_URL", "https://example.cloud.gooddata.com")
        args = build_parser().parse_args([command, *positional])
        assert getattr(args, action.dest) == expected, f"{command} {flag} from {variable}"
        monkeypatch.delenv(variable)
        monkeypatch.delenv("RECONCILER_API_URL", raising=False)


def test_reconciler_output_json_is_honoured_and_checked(
        converged: tuple[Path, Path, RunningEmulator]) -> None:
    manifests, state, _ = converged
    env = {"RECONCILER_OUTPUT": "json", "RECONCILER_STATE": str(state)}
    assert {r["name"] for r in json.loads(reconciler("status", env=env).stdout)} == {
        "alpha", "beta", "gamma"}
    assert json.loads(reconciler("history", "alpha", env=env).stdout)[0]["attempt"] == 1
    assert json.loads(reconciler("validate", manifests, env=env).stdout)["valid"] is True
    assert json.loads(reconciler("plan", "--manifests", manifests, env=env).stdout)[
        "changes"] == 0
    bad = reconciler("status", env={**env, "RECONCILER_OUTPUT": "yaml"})
    assert bad.returncode == 2 and "expected text or json, got 'yaml'" in bad.stderr


# ------------------------------------------------------------------ the demo's progress


def test_demo_progress_counts_attempts_from_1_and_shows_the_elapsed_time() -> None:
    import io

    from reconciler.cli.demo import TICK, Progress
    from reconciler.execution.engine import Transition

    now = [100.0]
    out = io.StringIO()
    progress = Progress(out, clock=lambda: now[0])

    def event(state: str, **extra: Any) -> Transition:
        return Transition(name="job", service="svc", command="reindex", spec_hash="h",
                          state=state, previous=None, operation_id="op-1", **extra)

    progress(event(S.SUBMITTING, attempt=1))
    now[0] += 1
    progress(event(S.PENDING, attempt=1))
    now[0] += TICK - 1
    progress.tick()  # not yet: TICK since it was accepted
    now[0] += 1
    progress.tick()
    now[0] += 3
    progress(event(S.IN_SYNC, attempt=1, duration=8.0))
    now[0] += TICK
    progress.tick()  # done: no more lines
    lines = [" ".join(ln.split()) for ln in out.getvalue().splitlines()]
    assert lines == [
        "0.0s job submitting attempt 1, operation op-1",
        "1.0s job pending",
        "6.0s job pending still pending, 5s elapsed",
        "9.0s job in_sync after 8.0s",
    ]


@pytest.mark.parametrize(("given", "adaptive", "fixed"), [
    (None, True, None), ("auto", True, None), ("AUTO", True, None), ("25", False, 25.0),
    ("0.5", False, 0.5), ("0", False, None)])
def test_rate_limit_is_adaptive_by_default_fixed_or_unlimited(
        given: str | None, adaptive: bool, fixed: float | None) -> None:
    from reconciler.cli.main import build_parser
    from reconciler.cli.settings import client_settings

    argv = ["run", "--api-url", "https://example.cloud.gooddata.com"]
    args = build_parser().parse_args(argv + (["--rate-limit", given] if given else []))
    settings = client_settings(args)
    assert (settings.adaptive_rate, settings.rate_limit) == (adaptive, fixed)


@pytest.mark.parametrize("given", ["-1", "fast", "inf", "nan"])
def test_a_bad_rate_limit_is_refused_naming_the_flag(given: str) -> None:
    done = subprocess.run([sys.executable, "-m", "reconciler", "run", "--api-url",
                           "https://example.cloud.gooddata.com", "--rate-limit", given],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--rate-limit: must be 'auto' or a number" in done.stderr
    assert "Traceback" not in done.stderr
