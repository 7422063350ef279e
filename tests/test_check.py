"""``reconciler check`` (will this work?) and ``run``'s start-up checks: the real binary
against the emulator, one test per thing that can be wrong, each failure one line with
what to do; ``run --once`` stops within seconds on an API it cannot reach or a refused
token, naming host:port or the status."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from integration_support import (
    OTHER_SERVICE_NAME,
    SERVICE_ID,
    cli_env,
    emulator_config,
    emulator_config_dict,
    executions,
    manifest,
    reconciler,
    running_emulator,
    stop_process,
    wait_for,
    write_manifest,
    write_manifests,
)

from reconciler.ailake.client import ClientSettings
from reconciler.ailake.emulator import RunningEmulator, start_background
from reconciler.cli.check import (
    TITLES,
    api_checks,
    api_url_problem,
    listen_check,
    preflight,
    render_checks,
    source_checks,
    store_check,
)
from reconciler.errors import ReconcilerError
from reconciler.runtime.settings import DaemonSettings
from reconciler.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with running_emulator() as emu:
        yield emu


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def good_manifests(directory: Path) -> Path:
    return write_manifests(directory, [
        manifest("alpha", "quick"),
        manifest("beta", "instant", service_name=OTHER_SERVICE_NAME),
    ])


def check(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
          ) -> tuple[int, dict[str, dict[str, Any]], str]:
    """``reconciler check ... -o json``: exit status, checks by name, stderr."""
    done = reconciler("check", "-o", "json", *args, env=env)
    document = json.loads(done.stdout)
    assert document["ok"] == (done.returncode == 0)
    return done.returncode, {c["name"]: c for c in document["checks"]}, done.stderr


def statuses(checks: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: c["status"] for name, c in checks.items()}


# ---------------------------------------------------------------------------- all pass


def listing_commands() -> dict[str, Any]:
    """The test emulator's services, each listing its commands in its status."""
    data = emulator_config_dict()
    for service in data["services"]:
        service["status"] = {"ready": True, "commands": sorted(service["commands"])}
    return data


def test_check_passes_everything_exits_0_and_prints_one_tick_per_check(
        tmp_path: Path) -> None:
    manifests = good_manifests(tmp_path / "manifests")
    port = free_port()
    with running_emulator(**listing_commands()) as emulator:
        done = reconciler("check", "--manifests", manifests, "--api-url", emulator.url,
                          "--state", tmp_path / "state.db", "--listen", f":{port}")
        assert executions(emulator.url) == []
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [ln.split("  ")[0][2:] for ln in lines[:len(TITLES)]] == list(TITLES.values())
    assert all(ln.startswith("✓ ") for ln in lines[:len(TITLES)]), done.stdout
    assert lines[-1] == "All checks passed."
    assert f"0.0.0.0:{port} is free" in done.stdout
    assert not (tmp_path / "state.db").exists(), "check creates nothing"


def test_check_reads_runs_environment_variables_and_rec_output_json(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests = good_manifests(tmp_path / "manifests")
    done = reconciler("check", env={
        "RECONCILER_MANIFESTS": str(manifests), "RECONCILER_API_URL": emulator.url,
        "RECONCILER_STATE": str(tmp_path / "state.db"), "RECONCILER_LISTEN": "",
        "RECONCILER_OUTPUT": "json"})
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert document["ok"] is True
    by_name = {c["name"]: c for c in document["checks"]}
    assert by_name["listen"]["status"] == "skip"
    assert emulator.url in by_name["api"]["message"]
    assert all(c["status"] == "pass" for n, c in by_name.items()
               if n not in ("listen", "commands"))


# ---------------------------------------------------------------------------- the API


def test_an_unreachable_api_fails_in_seconds_naming_host_and_port(tmp_path: Path) -> None:
    manifests = good_manifests(tmp_path / "manifests")
    port = free_port()  # nothing listens there now
    started = time.monotonic()
    code, checks, _ = check("--manifests", manifests, "--api-url", f"http://127.0.0.1:{port}",
                            "--state", tmp_path / "s.db", "--listen", "")
    assert time.monotonic() - started < 10
    assert code == 1
    api = checks["api"]
    assert api["status"] == "fail"
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in api["message"]
    assert "--api-url" in api["hint"] and "RECONCILER_API_URL" in api["hint"]
    assert {checks[n]["status"] for n in ("token", "services", "commands", "ready")} == {"skip"}


def test_an_api_url_ending_in_api_v1_is_explained(tmp_path: Path,
                                                  emulator: RunningEmulator) -> None:
    code, checks, _ = check("--manifests", good_manifests(tmp_path / "m"),
                            "--api-url", emulator.url + "/api/v1", "--state", tmp_path / "s.db",
                            "--listen", "")
    assert code == 1
    assert "is not the organisation's root URL" in checks["api"]["message"]
    assert f"use --api-url {emulator.url}" in checks["api"]["message"]
    assert api_url_problem("https://x.example.com") is None
    assert api_url_problem("https://x.example.com/proxy/") is None
    assert api_url_problem("https://x.example.com/api/v1/") is not None


def test_a_url_that_is_not_the_organisation_root_answers_404_and_says_so(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    code, checks, _ = check("--api-url", emulator.url + "/gooddata", "--state",
                            tmp_path / "s.db", "--listen", "", "--manifests",
                            good_manifests(tmp_path / "m"))
    assert code == 1
    assert checks["api"]["httpStatus"] == 404
    assert "not a GoodData organisation's root URL" in checks["api"]["message"]


def test_a_refused_token_and_a_missing_token_are_told_apart(tmp_path: Path) -> None:
    manifests = good_manifests(tmp_path / "m")
    with running_emulator(token="s3cret-token") as emu:
        code, checks, _ = check("--manifests", manifests, "--api-url", emu.url,
                                "--state", tmp_path / "s.db", "--listen", "",
                                env={"RECONCILER_API_TOKEN": "stale-token"})
        assert code == 1
        assert checks["api"]["status"] == "pass"
        token = checks["token"]
        assert (token["status"], token["httpStatus"]) == ("fail", 401)
        assert "the API refused the token (401 Unauthorized" in token["message"]
        assert "RECONCILER_API_TOKEN" in token["hint"]
        missing = check("--manifests", manifests, "--api-url", emu.url, "--state",
                        tmp_path / "s.db", "--listen", "")[1]["token"]
        assert "no API token is configured" in missing["message"]
        good = check("--manifests", manifests, "--api-url", emu.url, "--state",
                     tmp_path / "s.db", "--listen", "",
                     env={"RECONCILER_API_TOKEN": "s3cret-token"})
        assert good[0] == 0, good
        assert "AiLake entitlement" in good[1]["token"]["message"]
        done = reconciler("check", "--manifests", manifests, "--api-url", emu.url,
                          env={"RECONCILER_API_TOKEN": "stale-token"})
    assert "stale-token" not in done.stdout + done.stderr
    assert "s3cret-token" not in done.stdout + done.stderr


def test_a_403_names_the_ailake_entitlement() -> None:
    def forbidden(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"title": "Forbidden", "status": 403})

    checks = asyncio.run(api_checks(
        ClientSettings(base_url="https://example.cloud.gooddata.com", token="t"),
        services=False, transport=httpx.MockTransport(forbidden)))
    api, token = checks
    assert api.status == "pass" and token.failed and token.fatal
    assert token.http_status == 403
    assert "lacks the AiLake entitlement" in token.message
    assert "MANAGE" in token.message and "entitlement" in token.hint


def test_an_api_failing_with_5xx_is_a_failure_but_not_fatal() -> None:
    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"title": "Service Unavailable", "status": 503})

    [api, token] = asyncio.run(api_checks(
        ClientSettings(base_url="https://example.cloud.gooddata.com"), services=False,
        transport=httpx.MockTransport(failing)))
    assert api.failed and not api.fatal and api.http_status == 503
    assert "try again later" in api.hint
    assert token.status == "skip"


def test_missing_services_missing_commands_and_a_service_not_ready(tmp_path: Path) -> None:
    config = emulator_config(services=[
        {"id": SERVICE_ID, "name": "lake", "status": {"ready": False,
                                                       "commands": ["quick", "instant"]},
         "commands": {"quick": {"duration": "0s"}, "instant": {"duration": "0s"}}},
    ])
    manifests = write_manifests(tmp_path / "m", [
        manifest("fine", "quick"),
        manifest("typo", "quik"),
        manifest("elsewhere", "quick", service_name="no-such-service"),
    ])
    with start_background(config, host="127.0.0.1", port=0) as emu:
        code, checks, _ = check("--manifests", manifests, "--api-url", emu.url,
                                "--state", tmp_path / "s.db", "--listen", "")
    assert code == 1
    assert statuses(checks) == {
        "api": "pass", "token": "pass", "services": "fail", "commands": "fail",
        "ready": "fail", "store": "pass", "source": "pass", "manifests": "pass",
        "listen": "skip"}
    assert "no service 'no-such-service' (used by elsewhere); the API lists: lake" in (
        checks["services"]["message"])
    assert ("service lake has no command 'quik' (used by typo); it lists: instant, quick"
            in checks["commands"]["message"])
    assert "service lake is not ready" in checks["ready"]["message"]


def test_services_that_list_no_commands_are_not_verified_not_failed(
        tmp_path: Path) -> None:
    config = emulator_config(services=[
        {"id": SERVICE_ID, "name": "lake", "status": None,
         "commands": {"quick": {"duration": "0s"}}}])
    manifests = write_manifests(tmp_path / "m", [manifest("fine", "quick")])
    with start_background(config, host="127.0.0.1", port=0) as emu:
        code, checks, _ = check("--manifests", manifests, "--api-url", emu.url,
                                "--state", tmp_path / "s.db", "--listen", "")
    assert code == 0
    assert checks["commands"]["status"] == checks["ready"]["status"] == "skip"
    assert "not verified" in checks["commands"]["message"]


# ---------------------------------------------------------------------------- store, source, port


def test_a_state_path_under_a_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    found = store_check(str(tmp_path / "blocker" / "state.db"))
    assert found.failed and found.fatal
    assert found.message == (f"cannot create {tmp_path}/blocker/state.db: "
                             f"{tmp_path}/blocker is a file, not a directory")
    assert "writable volume" in found.hint


def test_a_state_directory_that_cannot_be_written_names_the_permission(
        tmp_path: Path) -> None:
    """Refused by ``os.access`` here (root, who runs these tests in containers, passes
    every mode check); ``test_run_with_a_read_only_state_directory_...`` refuses it for
    real where the tests do not run as root."""
    data = tmp_path / "data"
    data.mkdir()
    real = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        return False if Path(path) == data and mode & os.W_OK else real(path, mode, **kwargs)

    with mock.patch.object(os, "access", access):
        missing = store_check(str(data / "state.db"))
        nested = store_check(str(data / "sub" / "state.db"))
    assert missing.failed and f"{data} is not writable by uid {os.geteuid()}" in missing.message
    assert "permission denied" in missing.message
    assert f"the state directory {data}/sub does not exist" in nested.message


def _read_only(directory: Path, *args: str | os.PathLike[str],
               ) -> subprocess.CompletedProcess[str]:
    """``reconciler ARGS`` with ``directory`` read-only: a read-only bind mount in a private
    mount namespace as root (whom no mode stops), its write bits removed otherwise."""
    argv = [sys.executable, "-m", "reconciler", *map(str, args)]
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("needs unshare to make a directory read-only for root")
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                str(directory), *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              env=cli_env(), check=False)
        if "mount" in done.stderr and "reconciler" not in done.stderr:
            pytest.skip(f"cannot mount here: {done.stderr.strip()}")
        return done
    directory.chmod(0o555)
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              env=cli_env(), check=False)
    finally:
        directory.chmod(0o755)


def test_check_and_run_name_a_state_directory_they_cannot_write(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    data = tmp_path / "data"
    data.mkdir()
    manifests = good_manifests(tmp_path / "m")
    checked = _read_only(data, "check", "--manifests", manifests, "--api-url", emulator.url,
                         "--state", data / "state.db", "--listen", "", "-o", "json")
    store = {c["name"]: c for c in json.loads(checked.stdout)["checks"]}["store"]
    assert checked.returncode == 1 and store["status"] == "fail"
    assert store["message"].startswith(f"cannot create {data}/state.db: {data} is not writable")
    started = time.monotonic()
    ran = _read_only(data, "run", "--once", "--manifests", manifests, "--api-url",
                     emulator.url, "--state", data / "state.db", "--listen", "")
    assert time.monotonic() - started < 20
    assert ran.returncode == 1 and "Traceback" not in ran.stderr
    assert f"{data} is not writable" in ran.stderr
    assert executions(emulator.url) == []


def test_run_with_a_state_path_under_a_file_stops_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    started = time.monotonic()
    done = reconciler("run", "--manifests", good_manifests(tmp_path / "m"),
                      "--api-url", "http://127.0.0.1:9", "--state",
                      tmp_path / "blocker" / "state.db", "--listen", "", timeout=30)
    assert time.monotonic() - started < 15
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("reconciler: error: state store: cannot create ")
    assert "is a file, not a directory" in done.stderr


def test_an_existing_store_is_checked_read_only_and_counted(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    Store(str(state)).close()
    before = state.read_bytes()
    found = store_check(str(state))
    assert found.status == "pass" and "0 intent(s) recorded" in found.message
    assert state.read_bytes() == before
    (tmp_path / "junk.db").write_text("not a database at all, not even close" * 100)
    assert store_check(str(tmp_path / "junk.db")).failed


def test_a_damaged_store_is_told_with_the_recover_command(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("not a database at all, not even close" * 100)
    found = store_check(str(junk))
    assert found.failed and f"reconciler store recover --state {junk}" in found.hint


def test_a_missing_source_and_invalid_manifests(tmp_path: Path) -> None:
    [source, manifests], load = source_checks(tmp_path / "nowhere", None)
    assert load is None and source.failed and "does not exist" in source.message
    assert manifests.status == "skip"
    folder = good_manifests(tmp_path / "m")
    (folder / "bad.yaml").write_text("apiVersion: ailake.reconciler/v1\nkind: Nope\n")
    [source, manifests], load = source_checks(folder, None)
    assert source.status == "pass" and load is not None
    assert manifests.failed and "bad.yaml:2" in manifests.message
    assert f"reconciler validate {folder}" in manifests.hint
    (tmp_path / "empty").mkdir()
    [_, empty], _ = source_checks(tmp_path / "empty", None)
    assert empty.failed and "no manifests" in empty.message


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git CLI")
def test_a_git_source_is_fetched_into_a_scratch_folder(tmp_path: Path,
                                                       emulator: RunningEmulator) -> None:
    from git_support import Remote
    from git_support import manifest as git_manifest

    remote = Remote(tmp_path / "srv")
    remote.commit({"manifests/a.yaml": git_manifest("a")}, "first")
    code, checks, _ = check("--git-url", remote.url, "--git-path", "manifests",
                            "--api-url", emulator.url, "--state", tmp_path / "run" / "s.db",
                            "--listen", "")
    assert checks["source"]["status"] == "pass", checks["source"]
    assert remote.head() in checks["source"]["message"]
    assert not (tmp_path / "run").exists()
    code, checks, _ = check("--git-url", (tmp_path / "missing.git").as_uri(),
                            "--api-url", emulator.url, "--state", tmp_path / "s.db",
                            "--listen", "")
    assert code == 1 and checks["source"]["status"] == "fail"
    assert "--git-url" in checks["source"]["hint"]


def test_a_port_in_use_is_named() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = listen_check(f"127.0.0.1:{port}")
    assert busy.failed and busy.message == f"127.0.0.1:{port} is in use by another process"
    assert listen_check("").status == "skip"
    assert listen_check("nonsense").failed
    assert listen_check(":0").status == "pass"


def test_the_text_puts_each_hint_under_its_failure_and_counts_the_failures() -> None:
    text = render_checks([listen_check("nonsense"), listen_check("")],
                         marks=("✓", "✗", "-"))
    first, hint, skipped, _, summary = text.splitlines()
    assert first.startswith("✗ listener  --listen: expected HOST:PORT")
    assert hint.strip().startswith("→ give --listen HOST:PORT or :PORT")
    assert skipped.startswith("- listener")
    assert summary == "1 of 2 checks failed: listener."


# ---------------------------------------------------------------------------- run's start-up


def test_run_once_with_a_refused_token_stops_in_seconds_with_one_line(
        tmp_path: Path) -> None:
    manifests = good_manifests(tmp_path / "m")
    with running_emulator(token="s3cret-token") as emu:
        started = time.monotonic()
        done = reconciler("run", "--once", "--manifests", manifests, "--api-url", emu.url,
                          "--state", tmp_path / "s.db", "--listen", "", "--log-format",
                          "json", env={"RECONCILER_API_TOKEN": "stale-token"}, timeout=60)
        took = time.monotonic() - started
        assert executions(emu.url) == []
    assert done.returncode == 1
    assert took < 10, took
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("reconciler: error: API token: the API refused the token (401")
    assert "RECONCILER_API_TOKEN" in line
    events = [json.loads(e) for e in done.stdout.splitlines() if e.strip()]
    failed = [e for e in events if e["event"] == "startup_check_failed"]
    assert [(e["check"], e["status"], e["level"]) for e in failed] == [("token", 401, "error")]
    assert "stale-token" not in done.stdout + done.stderr


def test_run_once_with_a_wrong_api_url_stops_in_seconds_naming_host_and_port(
        tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    done = reconciler("run", "--once", "--manifests", good_manifests(tmp_path / "m"),
                      "--api-url", f"http://127.0.0.1:{port}", "--state", tmp_path / "s.db",
                      "--listen", "", "--log-format", "json", timeout=60)
    assert time.monotonic() - started < 10
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert f"cannot connect to 127.0.0.1:{port}" in line
    assert "ConnectError" not in line


def test_run_refuses_an_api_url_ending_in_api_v1(tmp_path: Path) -> None:
    done = reconciler("run", "--once", "--manifests", good_manifests(tmp_path / "m"),
                      "--api-url", "https://example.cloud.gooddata.com/api/v1",
                      "--state", tmp_path / "s.db", "--listen", "")
    assert done.returncode == 1
    assert "use --api-url https://example.cloud.gooddata.com" in done.stderr


def test_run_logs_one_start_up_line_naming_api_source_store_interval_and_limits(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests = good_manifests(tmp_path / "m")
    done = reconciler("run", "--once", "--manifests", manifests, "--api-url", emulator.url,
                      "--state", tmp_path / "s.db", "--listen", "", "--interval", "7s",
                      "--max-in-flight", "5", "--max-per-service", "2", "--log-format",
                      "json")
    assert done.returncode == 0, done.stdout + done.stderr
    events = [json.loads(e) for e in done.stdout.splitlines() if e.strip()]
    [start] = [e for e in events if e["event"] == "starting"]
    assert events[0] is start
    assert (start["api_url"], start["source"], start["store"]) == (
        emulator.url, str(manifests), str(tmp_path / "s.db"))
    assert (start["interval"], start["max_in_flight"], start["max_per_service"]) == (7.0, 5, 2)
    assert not [e for e in events if e["event"] == "startup_check_failed"]


def test_the_daemon_logs_a_failed_start_up_check_and_goes_on(tmp_path: Path) -> None:
    """Without ``--once`` an API that refuses the token is logged, not fatal (it may be
    fixed without a restart); ``tests/test_secrets.py`` follows the same daemon further."""
    settings = DaemonSettings(
        manifests=good_manifests(tmp_path / "m"),
        client=ClientSettings(base_url="https://example.cloud.gooddata.com", token="x"),
        state=str(tmp_path / "s.db"), listen=None, once=False)

    def refused(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"title": "Unauthorized", "status": 401})

    asyncio.run(preflight(settings, transport=httpx.MockTransport(refused)))
    once = dataclasses.replace(settings, once=True)
    with pytest.raises(ReconcilerError, match="refused the token"):
        asyncio.run(preflight(once, transport=httpx.MockTransport(refused)))


def test_run_accepts_listen_colon_port(tmp_path: Path, emulator: RunningEmulator) -> None:
    port = free_port()
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run", "--manifests",
             str(good_manifests(tmp_path / "m")), "--api-url", emulator.url, "--state",
             str(tmp_path / "s.db"), "--listen", f":{port}", "--log-format", "json"],
            stdout=out, stderr=subprocess.STDOUT, env=cli_env())
    try:
        def healthy() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).is_success
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout=30, what="/healthz on :PORT")
        # check, run in the pod after deploying, finds the port taken by the reconciler
        taken = listen_check(f":{port}")
        assert taken.status == "pass", taken
        assert taken.message.startswith(f"0.0.0.0:{port} is taken by a running reconciler")
    finally:
        stop_process(proc)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    [start_line] = [e for e in events if e["event"] == "starting"]
    assert start_line["listen"] == f"0.0.0.0:{port}"


def test_manifests_changes_do_not_need_a_restart_for_check(tmp_path: Path) -> None:
    """Two checks in a row see the source as it is now (no cache across calls)."""
    folder = good_manifests(tmp_path / "m")
    with running_emulator(**listing_commands()) as emulator:
        assert check("--manifests", folder, "--api-url", emulator.url, "--state",
                     tmp_path / "s.db", "--listen", "")[0] == 0
        write_manifest(folder, manifest("gamma", "quik"))
        code, checks, _ = check("--manifests", folder, "--api-url", emulator.url, "--state",
                                tmp_path / "s.db", "--listen", "")
    assert code == 1 and "no command 'quik'" in checks["commands"]["message"]
