"""Hostile input, the AI Lake API's answers: a real HTTP server (``HostileApi``) answers
with 100 MB bodies (declared, chunked, gzip bombs), drips, endless headers, deep JSON,
absurd waits and echoed credentials. A real ``reconciler run`` process must stay bounded
in memory (peak RSS printed) and store nothing of an oversized answer beyond a marker and
its size; the client (in this process, over real sockets) must give up within its bounds
with a clear, scrubbed error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from integration_support import REPO, running_emulator
from integration_support import manifest as job
from integration_support import write_manifests as write_jobs
from observability_support import Proc, daemon_env, start_daemon, write_manifests
from test_hostile_support import (
    SERVICE_ID,
    HostileApi,
    MiB,
    PeakSampler,
    Responder,
    answer,
    chunked_huge,
    declared_huge,
    drip,
    endless_headers,
    figure,
    gzip_answer,
    gzip_bomb,
    hostile_api,
    hostile_manifest,
    json_answer,
    rss_mib,
    terminal,
)

from reconciler.ailake.client import AiLakeClient, ClientSettings
from reconciler.ailake.responses import MAX_SERVER_DELAY
from reconciler.errors import ApiError, OutcomeUnknownError, TemporaryError
from reconciler.store.rows import JSON_LIMIT, STRING_LIMIT

#: every case is bounded in time, whatever happens
pytestmark = pytest.mark.timeout(120)


OP = "0b7c3f4e-0000-4000-8000-00000000abcd"
TOKEN = "tok-hostile-Zq81-never-shown"
#: the most a daemon's RSS may grow while 100 MB answers come in
GROWTH_LIMIT_MIB = 25.0


@pytest.fixture(autouse=True)
def _figures(pytestconfig: pytest.Config) -> None:
    terminal(pytestconfig)


@pytest.fixture
def api() -> Iterator[HostileApi]:
    with hostile_api() as server:
        yield server


def _daemon(tmp_path: Path, api: HostileApi, *args: str) -> Proc:
    manifests = write_manifests(tmp_path / "manifests", [hostile_manifest()])
    return start_daemon(tmp_path / "daemon", manifests=manifests, api_url=api.url,
                        env=daemon_env(RECONCILER_API_TOKEN=TOKEN), interval="60s",
                        args=["--request-timeout", "5s", *args])


def _wait(check: Any, timeout: float, daemon: Proc, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        assert daemon.popen.poll() is None, daemon.tail()
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}\n{daemon.tail()}")


def _store_bytes(daemon: Proc) -> int:
    state: Path = daemon.extra["state"]
    return sum(p.stat().st_size for p in state.parent.glob(state.name + "*"))


def _status(daemon: Proc) -> dict[str, Any]:
    intents: list[dict[str, Any]] = httpx.get(daemon.url + "/status", timeout=5).json()[
        "intents"]
    return intents[0]


# ---------------------------------------------------------------- a real daemon


@pytest.mark.parametrize(("case", "make"), [
    ("declared-100MB", lambda: declared_huge(100 * MiB)),
    ("chunked-100MB", lambda: chunked_huge(100 * MiB)),
    ("gzip-bomb-100MB", lambda: gzip_bomb(100 * MiB)),
    ("500-with-100MB-problem", lambda: declared_huge(100 * MiB, status=500,
                                                     content_type="application/problem+json")),
])
def test_huge_operation_answers_cost_the_daemon_no_memory(
        tmp_path: Path, api: HostileApi, case: str, make: Any) -> None:
    api.operation = make()
    daemon = _daemon(tmp_path, api)
    try:
        started = time.monotonic()
        with PeakSampler(daemon.popen.pid) as peak:
            _wait(lambda: api.hits["operation"] >= 3, 40, daemon, "three huge answers")
        took = time.monotonic() - started
        row = _status(daemon)
    finally:
        daemon.stop()
    stored = _store_bytes(daemon)
    figure(f"api.{case}", answers=api.hits["operation"], answer_mib=100,
           rss_mib=peak.baseline, peak_rss_mib=peak.peak,
           peak_growth_mib=peak.peak - peak.baseline, store_bytes=stored,
           three_answers_in_s=took)
    assert peak.peak - peak.baseline < GROWTH_LIMIT_MIB
    assert stored < 2 * MiB, "nothing of the answers is stored"
    assert row["state"] == "pending" and row["attempts"] == 1
    assert b"xxxxxxxxxxxxxxxx" not in _store_content(daemon)


def _store_content(daemon: Proc) -> bytes:
    state: Path = daemon.extra["state"]
    return b"".join(p.read_bytes() for p in state.parent.glob(state.name + "*"))


def test_a_huge_services_listing_sends_nothing(tmp_path: Path, api: HostileApi) -> None:
    api.services = declared_huge(100 * MiB)
    daemon = _daemon(tmp_path, api)
    try:
        with PeakSampler(daemon.popen.pid) as peak:
            _wait(lambda: api.hits["services"] >= 3, 40, daemon, "three huge listings")
        ready = httpx.get(daemon.url + "/readyz", timeout=10)
    finally:
        daemon.stop()
    figure("api.services-100MB", listings=api.hits["services"], peak_rss_mib=peak.peak,
           peak_growth_mib=peak.peak - peak.baseline, readyz=ready.status_code)
    assert peak.peak - peak.baseline < GROWTH_LIMIT_MIB
    assert api.hits["run"] == 0
    assert ready.status_code == 503


def test_a_huge_202_body_still_accepts_the_run(tmp_path: Path, api: HostileApi) -> None:
    api.run = declared_huge(100 * MiB, status=202)
    daemon = _daemon(tmp_path, api)
    try:
        with PeakSampler(daemon.popen.pid) as peak:
            _wait(lambda: _status(daemon)["state"] == "pending", 30, daemon, "pending")
    finally:
        daemon.stop()
    figure("api.202-with-100MB", runs=api.hits["run"], peak_rss_mib=peak.peak,
           peak_growth_mib=peak.peak - peak.baseline)
    assert api.hits["run"] == 1, "accepted once, never re-sent"
    assert peak.peak - peak.baseline < GROWTH_LIMIT_MIB


def test_a_large_result_is_stored_as_a_marker_with_its_size(
        tmp_path: Path, api: HostileApi) -> None:
    result = {f"k{i}": "v" * 900 for i in range(1000)}  # ~0.9 MB: under the 1 MiB cap
    api.operation = json_answer(200, {"status": "succeeded", "result": result})
    daemon = _daemon(tmp_path, api)
    try:
        _wait(lambda: _status(daemon)["state"] == "in_sync", 30, daemon, "in_sync")
    finally:
        daemon.stop()
    history = _history(daemon)
    stored = history[0]["result"]
    figure("api.result-0.9MB", stored_json_bytes=len(json.dumps(stored)),
           store_bytes=_store_bytes(daemon), marker=stored.get("truncated"))
    assert stored["truncated"] is True and stored["bytes"] > JSON_LIMIT
    assert len(json.dumps(stored)) <= JSON_LIMIT
    assert _store_bytes(daemon) < 2 * MiB


def test_a_huge_error_detail_is_stored_cut(tmp_path: Path, api: HostileApi) -> None:
    detail = "d" * (900 * 1024)
    api.operation = json_answer(200, {"status": "failed", "error": {
        "title": "Boom", "status": 500, "detail": detail}})
    daemon = _daemon(tmp_path, api)
    try:
        _wait(lambda: _status(daemon)["state"] in ("failed", "stalled"), 30, daemon,
              "failed")
        served = _status(daemon)["error"]
    finally:
        daemon.stop()
    figure("api.error-detail-900KiB", served_detail_chars=len(served["detail"]),
           store_bytes=_store_bytes(daemon))
    assert len(served["detail"]) < STRING_LIMIT + 100
    assert served["title"] == "Boom"


def _history(daemon: Proc) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "reconciler", "history", "victim",
                           "--state", str(daemon.extra["state"]), "-o", "json"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env=daemon_env())
    assert done.returncode == 0, done.stderr
    history: list[dict[str, Any]] = json.loads(done.stdout)
    return history


# ---------------------------------------------------------------- the client, in process


def _client(url: str, **settings: Any) -> AiLakeClient:
    defaults: dict[str, Any] = {"token": TOKEN, "timeout": 1.0, "connect_timeout": 1.0,
                                "pool_timeout": 1.0, "get_retries": 0, "post_retries": 0}
    return AiLakeClient(ClientSettings(base_url=url, **{**defaults, **settings}))


async def _get(responder: Responder, **settings: Any) -> tuple[BaseException | Any, float]:
    with hostile_api(operation=responder, probe_404=False) as api:
        async with _client(api.url, **settings) as client:
            started = time.monotonic()
            try:
                result: BaseException | Any = await client.get_operation(OP)
            except ApiError as exc:
                result = exc
            return result, time.monotonic() - started


async def test_a_dripped_body_is_given_up_within_the_attempt_bound() -> None:
    error, took = await _get(drip(0.2))
    bound = 1.0 + 1.0 + 2 * 1.0  # pool + connect + 2 * timeout
    figure("api.drip", bytes_per_s=5, gave_up_after_s=took, bound_s=bound)
    assert isinstance(error, TemporaryError) and took <= bound + 1.5


async def test_endless_headers_are_no_answer() -> None:
    error, took = await _get(endless_headers())
    figure("api.endless-headers", error=type(error).__name__, seconds=took)
    assert isinstance(error, TemporaryError) and took < 5


@pytest.mark.parametrize(("case", "body"), [
    ("deep-json", b"[" * 200_000 + b"]" * 200_000),
    ("deep-object", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    ("huge-integer", b'{"status": "succeeded", "n": ' + b"9" * 100_000 + b"}"),
    ("invalid-utf8", b'{"status": "\xff\xfe\xfa"}'),
    ("binary", bytes(range(256)) * 100),
    ("truncated-json", b'{"status": "succ'),
])
async def test_malformed_answers_are_transient_errors_not_crashes(
        case: str, body: bytes) -> None:
    error, took = await _get(answer(200, body))
    figure(f"api.{case}", bytes=len(body), error=type(error).__name__, seconds=took)
    assert isinstance(error, TemporaryError)
    assert "not a JSON object" in str(error) or "no 'status'" in str(error)


@pytest.mark.parametrize(("case", "responder"), [
    ("unknown-encoding", answer(200, b"\x00\x01binary", Content_Encoding="br")),
    ("invalid-gzip", answer(200, b"definitely not gzip", Content_Encoding="gzip")),
    ("length-mismatch", answer(200, b'{"status": "pending"}', Content_Length="1000")),
])
async def test_undecodable_answers_are_no_answer(case: str, responder: Responder) -> None:
    error, took = await _get(responder)
    figure(f"api.{case}", error=type(error).__name__, seconds=took)
    assert isinstance(error, TemporaryError)


async def test_a_compressed_answer_still_decodes() -> None:
    operation, _ = await _get(gzip_answer({"id": OP, "status": "pending"}))
    assert operation.status == "pending"


async def test_an_absurd_retry_after_is_capped() -> None:
    error, _ = await _get(json_answer(429, {"error": "slow down"}, Retry_After="1e308"))
    figure("api.retry-after-1e308", delay_s=getattr(error, "delay", None),
           cap_s=MAX_SERVER_DELAY)
    assert isinstance(error, TemporaryError) and error.delay == MAX_SERVER_DELAY


async def test_echoed_credentials_never_reach_an_error() -> None:
    echo = (f"request Authorization: Bearer {TOKEN}; also Bearer abc123-unknown-token "
            "and https://user:hunter2@proxy.example/")
    error, _ = await _get(json_answer(400, {"title": f"Bad {TOKEN}", "detail": echo}))
    assert isinstance(error, ApiError)
    shown = " ".join(str(x) for x in (error, error.title, error.detail, error.body))
    figure("api.echoed-credentials", message=str(error)[:160])
    for leaked in (TOKEN, "abc123-unknown-token", "hunter2"):
        assert leaked not in shown


async def test_a_huge_error_answer_to_a_run_keeps_nothing_of_it() -> None:
    with hostile_api(run=declared_huge(100 * MiB, status=500)) as api:
        async with _client(api.url) as client:
            with pytest.raises(OutcomeUnknownError) as info:
                await client.run_command(SERVICE_ID, "go", operation_id=OP, payload=None,
                                         context=None)
    error = info.value
    figure("api.run-500-100MB", body=error.body, message=str(error)[:200])
    assert error.body is not None and "not kept" in error.body and len(error.body) < 200


async def test_an_implausible_operation_id_is_ignored() -> None:
    with hostile_api(run=answer(202, b"", **{"operation-id": "x" * 10_000})) as api:
        async with _client(api.url) as client:
            accepted = await client.run_command(SERVICE_ID, "go", operation_id=OP,
                                                payload=None, context=None)
    assert accepted.operation_id == OP


async def test_the_response_cap_is_configurable() -> None:
    body = json.dumps({"id": OP, "status": "pending", "pad": "p" * 5000}).encode()
    small, _ = await _get(answer(200, body), max_response_bytes=4096)
    large, _ = await _get(answer(200, body), max_response_bytes=8192)
    assert isinstance(small, TemporaryError) and "answer too large" in str(small)
    assert large.status == "pending"


# ---------------------------------------------------------------- recovery pacing


def _events(daemon: Proc, name: str) -> list[dict[str, Any]]:
    found = []
    for line in daemon.stdout().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            found.append(event)
    return found


def _failing_for(count: int, then: Responder) -> Responder:
    failed = {"n": 0}
    down = json_answer(503, {"title": "down", "status": 503, "detail": "maintenance"})

    async def respond(request: Any, writer: Any) -> None:
        if failed["n"] < count:
            failed["n"] += 1
            await down(request, writer)
        else:
            await then(request, writer)
    return respond


def test_after_a_failed_first_pass_the_next_comes_within_seconds(
        tmp_path: Path, api: HostileApi) -> None:
    # the start-up check's request and the whole first pass (1 + 5 retries) are refused
    api.services = _failing_for(9, api.services)
    api.operation = json_answer(200, {"status": "succeeded", "result": {}})
    daemon = _daemon(tmp_path, api)  # interval 60 s
    try:
        _wait(lambda: _events(daemon, "reconcile_retry"), 40, daemon, "a failed pass")
        failed_at = time.monotonic()
        _wait(lambda: _status(daemon)["state"] == "in_sync", 40, daemon, "in_sync")
        recovered = time.monotonic() - failed_at
    finally:
        daemon.stop()
    figure("daemon.recovery-after-failed-first-pass", interval_s=60,
           retry_after_s=_events(daemon, "reconcile_retry")[0]["after"],
           in_sync_after_failure_s=recovered)
    assert recovered < 20, "the next pass came long before the 60 s interval"


def test_passes_that_keep_failing_back_off_doubling(tmp_path: Path, api: HostileApi) -> None:
    api.services = json_answer(401, {"title": "Unauthorized", "status": 401,
                                     "detail": "token expired"})
    daemon = _daemon(tmp_path, api, "--interval", "6s")
    try:
        _wait(lambda: len(_events(daemon, "reconcile_retry")) >= 4, 30, daemon,
              "four failed passes")
    finally:
        daemon.stop()
    waits = [e["after"] for e in _events(daemon, "reconcile_retry")][:5]
    figure("daemon.backoff", interval_s=6, waits_s=waits)
    assert waits[:4] == [1.0, 2.0, 4.0, 6.0]


# ---------------------------------------------------------------- resources


def test_rss_at_100_manifests_fits_the_charts_memory_request(tmp_path: Path) -> None:
    """The chart's default ``resources`` come from measured RSS (docs/security.md); at the
    suite's small size (100 manifests, converged) the daemon must fit the request."""
    values = yaml.safe_load((REPO / "helm" / "ailake-reconciler" / "values.yaml").read_text())
    request = values["resources"]["requests"]["memory"]
    assert request.endswith("Mi")
    manifests = write_jobs(tmp_path / "manifests", [job(f"m-{i:03d}", "instant")
                                                    for i in range(100)])
    with running_emulator() as emulator:
        daemon = start_daemon(tmp_path / "daemon", manifests=manifests, api_url=emulator.url,
                              env=daemon_env(), interval="60s",
                              args=["--rate-limit", "0", "--settle-window", "1s",
                                    "--max-in-flight", "64", "--max-per-service", "64"])
        try:
            def converged() -> bool:
                rows = httpx.get(daemon.url + "/status", timeout=10).json()["intents"]
                return len(rows) == 100 and all(r["state"] == "in_sync" for r in rows)

            started = time.monotonic()
            _wait(converged, 60, daemon, "100 manifests in sync")
            took = time.monotonic() - started
            current, peak = rss_mib(daemon.popen.pid)
        finally:
            daemon.stop()
    figure("resources.100-manifests", converged_s=took, rss_mib=current, peak_rss_mib=peak,
           chart_request=request)
    assert peak < int(request.removesuffix("Mi"))
