"""Leader election against a fake Kubernetes Lease API served over real HTTP.

The fake is a small Starlette app on loopback (uvicorn) with the API server's semantics
that matter here: 404 for a missing Lease, 409 AlreadyExists on a second create, a
``resourceVersion`` bumped on every write and 409 Conflict on a PUT carrying a stale one.
kmock (0.8) was tried first: its emulator assigns no resourceVersion, has no optimistic
concurrency and answers PUT (replace) with 404 "Endpoint Not Found", so it cannot play the
Lease API. ``httpx.MockTransport`` is used only for connection-level faults.

Durations are short (lease 1 s, retry 0.05 s), so the file runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from structlog.testing import capture_logs

from reconciler.errors import (
    ApiError,
    ConfigError,
    CredentialsError,
    PermanentError,
    TemporaryError,
)
from reconciler.runtime.leader import (
    LeaderElector,
    LeaseSettings,
    _api_error,
    format_microtime,
    parse_microtime,
)

NS = "ailake"
NAME = "ailake-reconciler"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
MICROTIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
T0 = datetime(2026, 11, 28, 15, 4, 5, tzinfo=UTC)


# ---------------------------------------------------------------------- the fake API


def _status(code: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse({"apiVersion": "v1", "kind": "Status", "metadata": {},
                         "status": "Failure", "code": code, "reason": reason,
                         "message": message}, status_code=code)


class FakeLeaseApi:
    """Leases in memory with resourceVersion semantics, plus injectable faults."""

    def __init__(self) -> None:
        self.url = ""
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        #: (method, path, Authorization header) of every request
        self.requests: list[tuple[str, str, str | None]] = []
        #: status codes to answer the next requests with, whatever they are
        self.faults: list[int] = []
        #: answer every request with this status until set back to None
        self.failing: int | None = None
        #: a concurrent writer changes the Lease just before the next PUTs land
        self.interfere_puts = 0
        #: every spec written, in order
        self.history: list[dict[str, Any]] = []
        #: requests never answer while set (until teardown)
        self.hanging = False
        self.unhang = asyncio.Event()

    def seed(self, spec: dict[str, Any], name: str = NAME) -> None:
        self.version += 1
        self.leases[(NS, name)] = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": NS,
                         "resourceVersion": str(self.version)},
            "spec": spec,
        }

    def lease(self, name: str = NAME) -> dict[str, Any]:
        return self.leases[(NS, name)]

    def spec(self, name: str = NAME) -> dict[str, Any]:
        spec: dict[str, Any] = self.lease(name)["spec"]
        return spec

    def calls(self, method: str) -> int:
        return sum(1 for m, _, _ in self.requests if m == method)

    async def _enter(self, request: Request) -> JSONResponse | None:
        self.requests.append((request.method, request.url.path,
                              request.headers.get("authorization")))
        if self.hanging:
            await self.unhang.wait()
        if self.faults:
            code = self.faults.pop(0)
            return _status(code, "Injected", f"injected fault {code}")
        if self.failing is not None:
            return _status(self.failing, "Injected", f"injected fault {self.failing}")
        return None

    def _write(self, key: tuple[str, str], body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        meta = dict(body.get("metadata") or {})
        meta.update(name=key[1], namespace=key[0], resourceVersion=str(self.version))
        stored = {**body, "metadata": meta}
        self.leases[key] = stored
        self.history.append(dict(stored.get("spec") or {}))
        return stored

    async def create(self, request: Request) -> JSONResponse:
        if (fault := await self._enter(request)) is not None:
            return fault
        body = await request.json()
        key = (request.path_params["ns"], body["metadata"]["name"])
        if key in self.leases:
            return _status(409, "AlreadyExists", f'leases "{key[1]}" already exists')
        return JSONResponse(self._write(key, body), status_code=201)

    async def get(self, request: Request) -> JSONResponse:
        if (fault := await self._enter(request)) is not None:
            return fault
        key = (request.path_params["ns"], request.path_params["name"])
        if key not in self.leases:
            return _status(404, "NotFound", f'leases "{key[1]}" not found')
        return JSONResponse(self.leases[key])

    async def put(self, request: Request) -> JSONResponse:
        if (fault := await self._enter(request)) is not None:
            return fault
        body = await request.json()
        key = (request.path_params["ns"], request.path_params["name"])
        if key not in self.leases:
            return _status(404, "NotFound", f'leases "{key[1]}" not found')
        if self.interfere_puts:
            self.interfere_puts -= 1
            self._write(key, self.leases[key])  # someone else wrote it meanwhile
        sent = (body.get("metadata") or {}).get("resourceVersion")
        if sent != self.leases[key]["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", f'Operation cannot be fulfilled on leases '
                           f'"{key[1]}": the object has been modified')
        return JSONResponse(self._write(key, body))

    def app(self) -> Starlette:
        base = LEASES.format(ns="{ns}")
        return Starlette(routes=[
            Route(base, self.create, methods=["POST"]),
            Route(base + "/{name}", self.get, methods=["GET"]),
            Route(base + "/{name}", self.put, methods=["PUT"]),
        ])


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (pytest owns SIGINT)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@pytest.fixture
async def api() -> AsyncIterator[FakeLeaseApi]:
    fake = FakeLeaseApi()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    config = uvicorn.Config(fake.app(), log_level="warning", access_log=False,
                            lifespan="off")
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield fake
    fake.unhang.set()
    server.should_exit = True
    await asyncio.wait_for(task, 5)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("sa-token-one\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------- helpers


def make_settings(url: str, identity: str, token: Path, **overrides: Any) -> LeaseSettings:
    values: dict[str, Any] = {
        "name": NAME, "namespace": NS, "identity": identity, "lease_duration": 1.0,
        "renew_deadline": 0.5, "retry_period": 0.05, "api_url": url,
        "token_file": str(token), "ca_file": None,
    }
    values.update(overrides)
    return LeaseSettings(**values)


class Recorder:
    """An elector plus the on_change calls it made."""

    def __init__(self, settings: LeaseSettings, **kwargs: Any) -> None:
        self.changes: list[bool] = []
        self.elector = LeaderElector(settings, on_change=self.changes.append, **kwargs)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@contextlib.asynccontextmanager
async def running(*recorders: Recorder) -> AsyncIterator[None]:
    for r in recorders:
        r.start()
    try:
        yield
    finally:
        for r in recorders:
            await r.stop()


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> float:
    """Seconds until ``check()`` holds (fails the test after ``timeout``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@contextlib.asynccontextmanager
async def never_two_leaders(*electors: LeaderElector) -> AsyncIterator[list[int]]:
    """Sample every few ms that at most one elector considers itself leader."""
    overlaps: list[int] = []

    async def watch() -> None:
        while True:
            leaders = sum(e.is_leader for e in electors)
            if leaders > 1:
                overlaps.append(leaders)
            await asyncio.sleep(0.002)

    task = asyncio.create_task(watch())
    try:
        yield overlaps
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert overlaps == [], "two electors were leader at the same time"


# ---------------------------------------------------------------------- settings


def test_from_env_none_without_lease_name() -> None:
    assert LeaseSettings.from_env({}) is None
    assert LeaseSettings.from_env({"RECONCILER_LEASE_NAME": "", "POD_NAME": "p"}) is None


def test_from_env_reads_the_chart_variables() -> None:
    env = {
        "RECONCILER_LEASE_NAME": "rel-ailake-reconciler",
        "RECONCILER_LEASE_NAMESPACE": "ailake",
        "POD_NAME": "rel-ailake-reconciler-6d4f-abcde",
        "POD_NAMESPACE": "other",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
    }
    s = LeaseSettings.from_env(env)
    assert s is not None
    assert (s.name, s.namespace, s.identity) == (
        "rel-ailake-reconciler", "ailake", "rel-ailake-reconciler-6d4f-abcde")
    assert s.api_url == "https://10.96.0.1:443"
    assert s.token_file == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert s.ca_file == "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    assert (s.lease_duration, s.renew_deadline, s.retry_period) == (15.0, 10.0, 2.0)


def test_from_env_fallbacks() -> None:
    s = LeaseSettings.from_env({"RECONCILER_LEASE_NAME": "l", "POD_NAMESPACE": "ns",
                                "KUBERNETES_SERVICE_HOST": "fd00::1"})
    assert s is not None
    assert s.namespace == "ns"
    assert s.identity == socket.gethostname()
    assert s.api_url == "https://[fd00::1]:443"
    s = LeaseSettings.from_env({"RECONCILER_LEASE_NAME": "l",
                                "RECONCILER_LEASE_NAMESPACE": "ns"})
    assert s is not None and s.api_url == "https://kubernetes.default.svc"
    with pytest.raises(ConfigError, match="NAMESPACE"):
        LeaseSettings.from_env({"RECONCILER_LEASE_NAME": "l"})


@pytest.mark.parametrize(("duration", "deadline", "retry"),
                         [(10.0, 10.0, 2.0), (15.0, 2.0, 2.0), (15.0, 10.0, 0.0), (0.5, 0.2, 0.1)])
def test_settings_reject_unsafe_timing(duration: float, deadline: float, retry: float) -> None:
    with pytest.raises(ConfigError):
        LeaseSettings(name="l", namespace="ns", identity="a", lease_duration=duration,
                      renew_deadline=deadline, retry_period=retry)


def test_microtime() -> None:
    assert format_microtime(T0) == "2026-11-28T15:04:05.000000Z"
    moment = T0 + timedelta(microseconds=123456)
    assert parse_microtime(format_microtime(moment)) == moment
    assert parse_microtime("2026-11-28T15:04:05Z") == T0


def test_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    s = LeaseSettings(name="l", namespace="ns", identity="a", api_url="https://k8s.invalid",
                      ca_file=str(tmp_path / "missing.crt"))
    with pytest.raises(ConfigError, match=r"CA file"):
        asyncio.run(LeaderElector(s).run())


# ---------------------------------------------------------------------- one elector


async def test_creates_a_missing_lease_and_renews_it(api: FakeLeaseApi,
                                                     token_file: Path) -> None:
    a = Recorder(make_settings(api.url, "a", token_file))
    async with running(a):
        await asyncio.wait_for(a.elector.wait_until_leader(), 3)
        assert a.elector.is_leader and a.changes == [True]
        assert api.calls("POST") == 1
        created = api.spec()
        assert created["holderIdentity"] == "a"
        assert created["leaseDurationSeconds"] == 1
        assert created["leaseTransitions"] == 0
        assert MICROTIME.match(created["acquireTime"]) and MICROTIME.match(created["renewTime"])
        first_renew, first_version = created["renewTime"], api.lease()["metadata"][
            "resourceVersion"]
        await eventually(lambda: api.spec()["renewTime"] > first_renew)
        renewed = api.spec()
        assert renewed["acquireTime"] == created["acquireTime"]
        assert renewed["leaseTransitions"] == 0
        assert int(api.lease()["metadata"]["resourceVersion"]) > int(first_version)
        assert api.calls("PUT") >= 1 and api.calls("POST") == 1
    assert a.changes == [True, False]  # leaving run() drops leadership
    assert all(auth == "Bearer sa-token-one" for _, _, auth in api.requests)


async def test_token_is_reread_and_never_logged(api: FakeLeaseApi, token_file: Path) -> None:
    a = Recorder(make_settings(api.url, "a", token_file))
    with capture_logs() as logs:
        api.faults = [403, 500]
        async with running(a):
            await asyncio.wait_for(a.elector.wait_until_leader(), 3)
            token_file.write_text("sa-token-two", encoding="utf-8")
            await eventually(lambda: api.requests[-1][2] == "Bearer sa-token-two")
    errors = [e for e in logs if e["event"] == "lease_error"]
    assert [e["status"] for e in errors] == [403, 500]
    assert [e["error_type"] for e in errors] == ["CredentialsError", "TemporaryError"]
    assert "HTTP 403" in errors[0]["error"]
    assert "sa-token" not in repr(logs)


@pytest.mark.parametrize(
    ("method", "status", "cls"),
    [
        ("GET", 401, CredentialsError),
        ("PUT", 403, CredentialsError),
        ("GET", 422, PermanentError),
        ("GET", 201, PermanentError),  # an unexpected success is not retried either
        ("GET", 429, TemporaryError),
        ("PUT", 500, TemporaryError),
        ("GET", 409, TemporaryError),  # the shared rule: a GET's 409 is transient
        ("POST", 503, TemporaryError),  # unknown outcome: the next round reads the Lease
        ("POST", 408, TemporaryError),
    ],
)
def test_lease_api_answers_are_classified_by_the_shared_rule(
    method: str, status: int, cls: type[ApiError]
) -> None:
    body = {"kind": "Status", "reason": "Injected", "message": "injected fault"}
    error = _api_error(httpx.Response(status, json=body), method, "/leases/x")
    assert type(error) is cls
    assert (error.status, error.title, error.detail) == (status, "Injected", "injected fault")
    assert str(error) == f"{method} /leases/x: HTTP {status} Injected: injected fault"


async def test_other_holder_is_respected_until_expiry(api: FakeLeaseApi,
                                                      token_file: Path) -> None:
    now = [T0 + timedelta(seconds=5)]
    api.seed({"holderIdentity": "other", "leaseDurationSeconds": 15,
              "acquireTime": format_microtime(T0), "renewTime": format_microtime(T0),
              "leaseTransitions": 3})
    a = Recorder(make_settings(api.url, "a", token_file), clock=lambda: now[0])
    async with running(a):
        await eventually(lambda: api.calls("GET") >= 4)
        assert not a.elector.is_leader and a.changes == []
        assert api.calls("PUT") == 0 and api.spec()["holderIdentity"] == "other"
        now[0] = T0 + timedelta(seconds=15)  # renewTime + 15 s: expired
        await asyncio.wait_for(a.elector.wait_until_leader(), 3)
    spec = api.spec()
    assert spec["holderIdentity"] == "a"
    assert spec["leaseTransitions"] == 4
    assert spec["acquireTime"] == spec["renewTime"] == "2026-11-28T15:04:20.000000Z"
    assert spec["leaseDurationSeconds"] == 1


async def test_empty_holder_is_taken_at_once(api: FakeLeaseApi, token_file: Path) -> None:
    api.seed({"holderIdentity": "", "leaseDurationSeconds": 3600,
              "renewTime": format_microtime(datetime.now(UTC)), "leaseTransitions": 7})
    a = Recorder(make_settings(api.url, "a", token_file))
    async with running(a):
        await asyncio.wait_for(a.elector.wait_until_leader(), 3)
    assert api.spec()["holderIdentity"] == "a" and api.spec()["leaseTransitions"] == 8


# ---------------------------------------------------------------------- two electors


async def test_two_electors_one_leader_and_failover_after_expiry(
        api: FakeLeaseApi, token_file: Path) -> None:
    a = Recorder(make_settings(api.url, "a", token_file))
    b = Recorder(make_settings(api.url, "b", token_file))
    async with never_two_leaders(a.elector, b.elector), running(a, b):
        await eventually(lambda: a.elector.is_leader or b.elector.is_leader)
        leader, standby = (a, b) if a.elector.is_leader else (b, a)
        await asyncio.sleep(1.5)  # longer than the lease: renewals keep it
        assert leader.changes == [True] and standby.changes == []
        assert api.spec()["leaseTransitions"] == 0

        await leader.stop()  # stops renewing, does not release
        assert not leader.elector.is_leader and leader.changes == [True, False]
        took = await eventually(lambda: standby.elector.is_leader)
        # not before the lease (1 s from the last renew, <= 0.05 s ago) expired
        assert 0.8 < took < 2.0, took
    spec = api.spec()
    assert spec["holderIdentity"] == standby.elector.settings.identity
    assert spec["leaseTransitions"] == 1


async def test_release_lets_the_other_take_over_at_once(api: FakeLeaseApi,
                                                       token_file: Path) -> None:
    slow = {"lease_duration": 10.0, "renew_deadline": 5.0, "retry_period": 0.05}
    a = Recorder(make_settings(api.url, "a", token_file, **slow))
    b = Recorder(make_settings(api.url, "b", token_file, **slow))
    async with never_two_leaders(a.elector, b.elector):
        async with running(a):
            await asyncio.wait_for(a.elector.wait_until_leader(), 3)
            b.start()
            await eventually(lambda: api.calls("GET") >= 6)
            assert not b.elector.is_leader
            await a.elector.release()
            assert not a.elector.is_leader and a.changes == [True, False]
            assert any(h["holderIdentity"] == "" and h["leaseDurationSeconds"] == 1
                       for h in api.history)
            took = await eventually(lambda: b.elector.is_leader)
            assert took < 1.0  # far sooner than the 10 s lease
            assert a.task is not None
            await asyncio.wait_for(a.task, 1)  # run() returned after release()
        await b.stop()
    assert api.spec()["leaseTransitions"] == 1
    puts = api.calls("PUT")
    await b.elector.release()  # not the holder any more (b stopped, still named): releases
    assert api.spec()["holderIdentity"] == ""
    await a.elector.release()  # the Lease does not name a: no write
    assert api.calls("PUT") == puts + 1


# ---------------------------------------------------------------------- faults


async def test_conflict_on_update_is_not_leader_for_that_round(
        api: FakeLeaseApi, token_file: Path) -> None:
    a = Recorder(make_settings(api.url, "a", token_file))
    async with running(a):
        await asyncio.wait_for(a.elector.wait_until_leader(), 3)
        await eventually(lambda: api.calls("PUT") >= 1)
        api.interfere_puts = 1  # the next renew carries a stale resourceVersion
        await eventually(lambda: len(a.changes) >= 3)
        assert a.changes[:3] == [True, False, True]  # down for one round, then renewed
    assert api.spec()["leaseTransitions"] == 0  # same holder throughout


async def test_conflict_while_acquiring(api: FakeLeaseApi, token_file: Path) -> None:
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    api.seed({"holderIdentity": "gone", "leaseDurationSeconds": 1,
              "renewTime": format_microtime(long_ago), "leaseTransitions": 0})
    api.interfere_puts = 2
    a = Recorder(make_settings(api.url, "a", token_file))
    async with running(a):
        await eventually(lambda: api.calls("PUT") >= 2)
        assert not a.elector.is_leader
        await asyncio.wait_for(a.elector.wait_until_leader(), 3)
    assert api.calls("PUT") >= 3 and a.changes == [True, False]


async def test_api_errors_past_renew_deadline_step_down(api: FakeLeaseApi,
                                                        token_file: Path) -> None:
    a = Recorder(make_settings(api.url, "a", token_file))  # renew_deadline 0.5 s
    async with running(a):
        await asyncio.wait_for(a.elector.wait_until_leader(), 3)
        api.failing = 503
        failed_at = time.monotonic()
        await asyncio.sleep(0.2)
        assert a.elector.is_leader  # a few failed renewals are tolerated
        took = await eventually(lambda: not a.elector.is_leader) + 0.2
        assert took < 0.9, took  # deadline 0.5 s, before the 1 s lease expires
        assert a.changes == [True, False]
        assert time.monotonic() - failed_at < 1.0  # before anyone could see it expired
        api.failing = None
        await asyncio.wait_for(a.elector.wait_until_leader(), 3)  # its own Lease again
    assert a.changes == [True, False, True, False]
    assert api.spec()["leaseTransitions"] == 0


async def test_hanging_api_steps_down_at_the_deadline(api: FakeLeaseApi,
                                                      token_file: Path) -> None:
    a = Recorder(make_settings(api.url, "a", token_file))
    async with running(a):
        await asyncio.wait_for(a.elector.wait_until_leader(), 3)
        api.hanging = True
        took = await eventually(lambda: not a.elector.is_leader)
        assert took < 0.9, took  # deadline 0.5 s, before the 1 s lease expires
        assert a.changes == [True, False]


async def test_connection_errors_step_down(token_file: Path) -> None:
    """Connection-level faults (refused, reset) with httpx.MockTransport."""
    state: dict[str, Any] = {"lease": None, "down": False}

    def handler(request: httpx.Request) -> httpx.Response:
        if state["down"]:
            raise httpx.ConnectError("connection refused", request=request)
        if request.method in ("POST", "PUT"):
            state["lease"] = json.loads(request.content)
            return httpx.Response(201 if request.method == "POST" else 200, json=state["lease"])
        if state["lease"] is None:
            return httpx.Response(404, json={"kind": "Status", "code": 404})
        return httpx.Response(200, json=state["lease"])

    a = Recorder(make_settings("http://k8s.test", "a", token_file),
                 transport=httpx.MockTransport(handler))
    with capture_logs() as logs:
        async with running(a):
            await asyncio.wait_for(a.elector.wait_until_leader(), 3)
            state["down"] = True
            took = await eventually(lambda: not a.elector.is_leader)
            assert took < 0.9, took  # deadline 0.5 s, before the 1 s lease expires
    assert a.changes == [True, False]
    errors = [e for e in logs if e["event"] == "lease_error"]
    assert errors and errors[0]["error_type"] == "ConnectError"
    assert len(errors) < 5  # a repeating error is not logged on every round
    assert "sa-token" not in repr(logs)


async def test_on_change_errors_do_not_kill_the_elector(api: FakeLeaseApi,
                                                        token_file: Path) -> None:
    def boom(_leader: bool) -> None:
        raise RuntimeError("listener bug")

    elector = LeaderElector(make_settings(api.url, "a", token_file), on_change=boom)
    with capture_logs() as logs:
        task = asyncio.create_task(elector.run())
        try:
            await asyncio.wait_for(elector.wait_until_leader(), 3)
            renewed = api.spec()["renewTime"]
            await eventually(lambda: api.spec()["renewTime"] > renewed)
            assert not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert [e["leader"] for e in logs if e["event"] == "leader_on_change_failed"] == [True,
                                                                                      False]
