"""The daemon's HTTP listener (``reconciler.runtime.listener``) over httpx's ASGI transport, with a
:class:`Surface` of fakes, and the daemon's own health rule (a silent loop is unhealthy)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.ailake.client import AiLakeClient, ClientSettings
from reconciler.execution.engine import EngineSettings
from reconciler.model.manifest import LoadResult
from reconciler.observe.metrics import Metrics
from reconciler.planning.planner import Limits
from reconciler.runtime import serving
from reconciler.runtime.daemon import Daemon, DaemonSettings
from reconciler.runtime.listener import MAX_HOOK_BODY, Surface, create_app, sign

SECRET = "hook-secret-4b1d"
BODY = json.dumps({"ref": "refs/heads/main", "after": "0123abcd"}).encode()
HOOK = "/hooks/reconcile"


@dataclass
class Fakes:
    healthy: tuple[bool, str] = (True, "loop alive")
    ready: tuple[bool, str] = (True, "manifests loaded, API reachable")
    status: dict[str, Any] = field(default_factory=lambda: {
        "version": "0.1.0", "revision": "sha256:abc", "invalidManifests": [],
        "intents": [{"name": "alpha", "state": "failed", "attempts": 2,
                     "operationId": "op-2", "error": {"title": "Command failed"},
                     "revision": "sha256:abc"}]})
    triggers: list[str] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)

    def surface(self) -> Surface:
        async def ready() -> tuple[bool, str]:
            return self.ready

        return Surface(metrics=self.metrics.exposition, healthy=lambda: self.healthy,
                       ready=ready, status=lambda: self.status,
                       trigger=self.triggers.append)


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[[Fakes, str | None], httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []

    def make(fakes: Fakes, secret: str | None = SECRET) -> httpx.AsyncClient:
        app = create_app(fakes.surface(), webhook_secret=secret)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                   base_url="http://daemon.test")
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.aclose()


# ---------------------------------------------------------------- read endpoints


async def test_metrics_endpoint_serves_the_prometheus_text_format(make_client: Any) -> None:
    client = make_client(Fakes())
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    # the Prometheus text format (not OpenMetrics), with its version and charset
    content_type = answer.headers["content-type"]
    assert content_type.startswith("text/plain; version="), content_type
    assert "charset=utf-8" in content_type
    names = {f.name for f in text_string_to_metric_families(answer.text)}
    assert "ailake_reconciler_build_info" in names
    assert "ailake_reconciler_reconciles" in names  # counter family, _total samples


@pytest.mark.parametrize(("state", "code"), [((True, "loop alive"), 200),
                                             ((False, "reconcile loop silent for 200s"), 503)])
async def test_healthz(make_client: Any, state: tuple[bool, str], code: int) -> None:
    client = make_client(Fakes(healthy=state))
    answer = await client.get("/healthz")
    assert answer.status_code == code
    assert state[1] in answer.text


@pytest.mark.parametrize(("state", "code"), [
    ((True, "manifests loaded, API reachable"), 200),
    ((False, "manifests not loaded yet"), 503),
    ((False, "AI Lake API not usable: HTTP 503"), 503),
])
async def test_readyz_with_reason(make_client: Any, state: tuple[bool, str], code: int) -> None:
    client = make_client(Fakes(ready=state))
    answer = await client.get("/readyz")
    assert answer.status_code == code
    assert state[1] in answer.text


async def test_status_is_json_of_every_intent(make_client: Any) -> None:
    fakes = Fakes()
    answer = await make_client(fakes).get("/status")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json() == fakes.status


async def test_read_endpoints_refuse_post_and_unknown_paths_are_404(make_client: Any) -> None:
    client = make_client(Fakes())
    assert (await client.post("/metrics")).status_code == 405
    assert (await client.get(HOOK)).status_code == 405
    assert (await client.get("/nope")).status_code == 404


# ---------------------------------------------------------------- webhook


def _headers(signature: str | None, delivery: str | None = None) -> dict[str, str]:
    headers = {"content-type": "application/json", "x-github-event": "push"}
    if signature is not None:
        headers["x-hub-signature-256"] = signature
    if delivery is not None:
        headers["x-github-delivery"] = delivery
    return headers


def test_sign_is_githubs_format() -> None:
    expected = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET) == "sha256=" + expected
    # GitHub's documented example (docs: "Validating webhook deliveries")
    assert sign(b"Hello, World!", "It's a Secret to Everybody") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")


async def test_webhook_disabled_without_a_secret(make_client: Any) -> None:
    fakes = Fakes()
    answer = await make_client(fakes, None).post(HOOK, content=BODY,
                                                 headers=_headers(sign(BODY, SECRET)))
    assert answer.status_code == 404
    assert fakes.triggers == []


async def test_webhook_with_a_correct_signature_triggers(make_client: Any) -> None:
    fakes = Fakes()
    answer = await make_client(fakes).post(HOOK, content=BODY,
                                           headers=_headers(sign(BODY, SECRET), "d-1"))
    assert answer.status_code == 202
    assert fakes.triggers == ["webhook"]


@pytest.mark.parametrize("case", ["missing", "empty", "wrong", "tampered", "other-secret",
                                  "sha1-format", "no-prefix", "uppercase-hex"])
async def test_webhook_rejects_bad_signatures(make_client: Any, case: str) -> None:
    good = sign(BODY, SECRET)
    body = BODY
    signature: str | None
    if case == "missing":
        signature = None
    elif case == "empty":
        signature = ""
    elif case == "wrong":
        signature = "sha256=" + "0" * 64
    elif case == "tampered":
        body, signature = BODY.replace(b"main", b"evil"), good
    elif case == "other-secret":
        signature = sign(BODY, SECRET + "x")
    elif case == "sha1-format":
        signature = "sha1=" + hmac.new(SECRET.encode(), BODY, hashlib.sha1).hexdigest()
    elif case == "no-prefix":
        signature = good.removeprefix("sha256=")
    else:
        signature = "sha256=" + good.removeprefix("sha256=").upper()
    fakes = Fakes()
    answer = await make_client(fakes).post(HOOK, content=body, headers=_headers(signature))
    assert answer.status_code == 401
    assert fakes.triggers == []
    assert SECRET not in answer.text


async def test_webhook_replay_with_wrong_signature_is_rejected(make_client: Any) -> None:
    """A captured delivery id replayed with another body (and its old signature, or a
    forged one) is refused, and does not block the genuine delivery afterwards."""
    fakes = Fakes()
    client = make_client(fakes)
    other = BODY + b" "
    answer = await client.post(HOOK, content=other, headers=_headers(sign(BODY, SECRET), "d-7"))
    assert answer.status_code == 401
    answer = await client.post(HOOK, content=other, headers=_headers(sign(other, "guess"), "d-7"))
    assert answer.status_code == 401
    assert fakes.triggers == []
    answer = await client.post(HOOK, content=BODY, headers=_headers(sign(BODY, SECRET), "d-7"))
    assert answer.status_code == 202
    assert fakes.triggers == ["webhook"]


async def test_webhook_repeated_delivery_is_ignored(make_client: Any) -> None:
    fakes = Fakes()
    client = make_client(fakes)
    headers = _headers(sign(BODY, SECRET), "72d3162e-cc78-11e3-81ab-4c9367dc0958")
    first = await client.post(HOOK, content=BODY, headers=headers)
    again = await client.post(HOOK, content=BODY, headers=headers)
    assert first.status_code == 202
    assert again.status_code == 200
    assert "duplicate" in again.text
    assert fakes.triggers == ["webhook"]
    # a new delivery of the same body (GitHub "redeliver" makes a new id) triggers again
    third = await client.post(HOOK, content=BODY, headers=_headers(sign(BODY, SECRET), "d-2"))
    assert third.status_code == 202
    assert fakes.triggers == ["webhook", "webhook"]


async def test_webhook_refuses_a_huge_body(make_client: Any) -> None:
    fakes = Fakes()
    body = b"x" * (MAX_HOOK_BODY + 1)
    answer = await make_client(fakes).post(HOOK, content=body,
                                           headers=_headers(sign(body, SECRET)))
    assert answer.status_code == 413
    assert fakes.triggers == []


async def test_webhook_body_at_the_limit_is_accepted(make_client: Any) -> None:
    fakes = Fakes()
    body = b"y" * MAX_HOOK_BODY
    answer = await make_client(fakes).post(HOOK, content=body,
                                           headers=_headers(sign(body, SECRET)))
    assert answer.status_code == 202
    assert fakes.triggers == ["webhook"]


# ---------------------------------------------------------------- the daemon's health


def _daemon(tmp_path: Path, interval: float) -> Daemon:
    return Daemon(DaemonSettings(manifests=tmp_path,
                                 client=ClientSettings(base_url="http://127.0.0.1:9"),
                                 interval=interval, listen=None))


def test_daemon_settings_nest_the_client_and_engine_and_never_show_secrets(
        tmp_path: Path) -> None:
    settings = DaemonSettings(
        manifests=tmp_path, webhook_secret=SECRET,
        client=ClientSettings(base_url="http://api.test", token="tok-SECRET-42",
                              rate_limit=10.0),
        engine=EngineSettings(limits=Limits(8, 2), settle=5.0))
    shown = repr(settings)
    assert "tok-SECRET-42" not in shown and SECRET not in shown
    assert "rate_limit=10.0" in shown and "max_in_flight=8" in shown
    assert settings.secrets == ("tok-SECRET-42", SECRET)
    assert DaemonSettings(manifests=tmp_path,
                          client=ClientSettings(base_url="http://api.test")).secrets == ()


@pytest.mark.parametrize("interval", [60.0, 120.0, 600.0])
def test_daemon_unhealthy_when_the_loop_is_silent_for_over_three_intervals(
        tmp_path: Path, interval: float) -> None:
    daemon = _daemon(tmp_path, interval)
    ok, why = daemon.healthy()
    assert ok, why
    daemon._heartbeat = time.monotonic() - 2.9 * interval
    ok, why = daemon.healthy()
    assert ok, why
    daemon._heartbeat = time.monotonic() - 3 * interval - 5
    ok, why = daemon.healthy()
    assert not ok
    assert "silent" in why
    daemon._heartbeat = time.monotonic()  # the loop came back
    assert daemon.healthy()[0]


def test_daemon_health_is_not_flappy_with_a_short_interval(tmp_path: Path) -> None:
    """With ``--interval 1s`` a single slow pass (a few seconds) is not "stuck": the limit
    never drops below three grace periods' worth of time."""
    daemon = _daemon(tmp_path, 1.0)
    daemon._heartbeat = time.monotonic() - 5
    assert daemon.healthy()[0]
    daemon._heartbeat = time.monotonic() - 10_000
    assert not daemon.healthy()[0]


async def test_daemon_not_ready_before_manifests_are_loaded(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, 60.0)
    ok, why = await serving.ready(daemon)
    assert not ok
    assert "not loaded" in why


def _services_page(request: httpx.Request, total: int) -> httpx.Response:
    page, size = int(request.url.params["page"]), int(request.url.params["size"])
    ids = [f"svc-{i}" for i in range(total)][page * size:(page + 1) * size]
    return httpx.Response(200, json={
        "data": [{"id": i, "type": "aiLakeService", "attributes": {"name": i, "serviceId": i}}
                 for i in ids],
        "links": {"self": str(request.url)},
        "meta": {"page": {"number": page, "size": size, "totalElements": total,
                          "totalPages": -(-total // size)}}})


async def _ready_daemon(tmp_path: Path,
                        handler: Callable[[httpx.Request], httpx.Response]) -> Daemon:
    daemon = _daemon(tmp_path, 60.0)
    daemon.client = AiLakeClient(ClientSettings(base_url="http://api.test"),
                                 transport=httpx.MockTransport(handler))
    daemon.load = LoadResult(commands=(), problems=(), revision="r")
    return daemon


async def test_readiness_checks_the_api_with_one_request(tmp_path: Path) -> None:
    """/readyz must not page through every service (one request per service)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _services_page(request, 40)

    daemon = await _ready_daemon(tmp_path, handler)
    assert daemon.client is not None
    try:
        ok, why = await serving.ready(daemon)
        assert ok, why
        assert len(seen) == 1
        await serving.ready(daemon)  # cached for a while: probes every few seconds cost nothing
        assert len(seen) == 1
    finally:
        await daemon.client.aclose()


async def test_readiness_answers_promptly_when_the_api_fails(tmp_path: Path) -> None:
    """A failing API makes the daemon unready within the probe's timeout (3 s in the
    chart), instead of holding /readyz through the client's retries and backoff."""
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"title": "Service Unavailable", "status": 503,
                                         "detail": "down", "traceId": "t-1"},
                              headers={"content-type": "application/problem+json"})

    daemon = await _ready_daemon(tmp_path, handler)
    assert daemon.client is not None
    try:
        started = time.monotonic()
        ok, why = await serving.ready(daemon)
        assert not ok
        assert "API" in why
        assert time.monotonic() - started < 3.0
    finally:
        await daemon.client.aclose()
