"""The daemon's one HTTP listener: metrics, health, status, the git webhook, the web view.

``/metrics`` (Prometheus), ``/healthz`` (the process and its loop are alive),
``/readyz`` (manifests loaded once and the API reachable; not tied to leadership),
``/status`` (JSON of every manifest), ``POST /hooks/reconcile`` (a git push webhook,
HMAC-SHA256 signed in ``X-Hub-Signature-256`` as GitHub does; disabled, 404, without a
secret), and the read-only web view (``GET /``, ``/manifests/{name}``:
:mod:`reconciler.observe.web`; 404 when it is off). The app only reads through
:class:`Surface`; the daemon owns the state.
:func:`serve` runs the app with uvicorn on the daemon's event loop. What ``/status``,
``/metrics`` and ``/readyz`` serve goes through the one scrubber
(:mod:`reconciler.model.scrub`) once more on its way out.

Bounded against abuse (``docs/security.md`` has the figures):

- **Bodies.** A ``Content-Length`` over the limit (:data:`MAX_HOOK_BODY` for the webhook,
  :data:`MAX_OTHER_BODY` elsewhere) is refused (413) before a byte of the body is read; a
  chunked body is cut (413) at the limit. The webhook refuses a request without a
  well-formed ``X-Hub-Signature-256`` (401) before reading its body, reads at most
  :data:`MAX_HOOK_BODIES` bodies at once (503 beyond), and computes the HMAC as the body
  streams (nothing of it is kept). An answer given before the request's body was read
  closes the connection.
- **Time.** The request line and headers must arrive within :data:`HEADER_TIMEOUT`
  seconds of the connection (or of the first byte of the next request on a kept-alive
  one), the body within :data:`BODY_TIMEOUT` more; an idle kept-alive connection is closed
  after :data:`KEEP_ALIVE_TIMEOUT`; then the socket is closed (:class:`GuardedH11`).
- **Concurrency.** At most :data:`MAX_IN_FLIGHT` requests are handled at once (503
  beyond), ``/healthz`` and ``/readyz`` excepted, so the probes stay answerable under
  abuse; beyond :data:`MAX_CONNECTIONS` open connections each new one closes the oldest
  still waiting for its request head (a flood of idle sockets cannot starve a probe);
  uvicorn itself answers 503 beyond :data:`LIMIT_CONCURRENCY` connections or requests.
  A request line with its headers is at most :data:`MAX_HEADER_BYTES` (431 beyond).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from reconciler.errors import ConfigError
from reconciler.listen import bind_socket, parse_listen
from reconciler.model import scrub
from reconciler.observe.web import WebSurface, web_routes

__all__ = [
    "BODY_TIMEOUT",
    "HEADER_TIMEOUT",
    "KEEP_ALIVE_TIMEOUT",
    "LIMIT_CONCURRENCY",
    "MAX_CONNECTIONS",
    "MAX_HEADER_BYTES",
    "MAX_HOOK_BODIES",
    "MAX_HOOK_BODY",
    "MAX_IN_FLIGHT",
    "MAX_OTHER_BODY",
    "GuardedH11",
    "Listening",
    "Surface",
    "create_app",
    "serve",
    "sign",
]

HOOK_PATH = "/hooks/reconcile"
#: the largest webhook body (bytes); GitHub's push payloads are far smaller
MAX_HOOK_BODY = 1024 * 1024
#: the largest body of any other request (bytes): none of them needs one
MAX_OTHER_BODY = 64 * 1024
#: webhook bodies read (and HMAC'd) at once; more are refused with 503
MAX_HOOK_BODIES = 4
#: requests handled at once, the probes excepted; more are refused with 503
MAX_IN_FLIGHT = 64
#: paths never refused for concurrency (the kubelet's probes)
PROBES = frozenset({"/healthz", "/readyz"})
#: seconds for a request line and its headers to arrive
HEADER_TIMEOUT = 5.0
#: seconds for a request's body to arrive, once its headers did
BODY_TIMEOUT = 10.0
#: seconds an idle kept-alive connection stays open
KEEP_ALIVE_TIMEOUT = 5
#: open connections beyond which the oldest one still waiting for its request head is
#: closed for each new one
MAX_CONNECTIONS = 256
#: connections (or requests) at which uvicorn answers 503 to everything
LIMIT_CONCURRENCY = 512
#: the most a request line with its headers may take (bytes; h11's bound)
MAX_HEADER_BYTES = 16 * 1024
_SEEN_DELIVERIES = 1024
_SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}")
#: seconds the listener's shutdown may take
SHUTDOWN_TIMEOUT = 5.0


@dataclass(frozen=True)
class Surface:
    """What the HTTP listener may read or trigger in the daemon."""

    metrics: Callable[[], bytes]
    healthy: Callable[[], tuple[bool, str]]
    ready: Callable[[], Awaitable[tuple[bool, str]]]
    status: Callable[[], Mapping[str, Any]]
    trigger: Callable[[str], None]
    #: the read-only web view (``GET /``, ``/manifests/{name}``); None: off (404)
    web: WebSurface | None = None


def sign(body: bytes, secret: str) -> str:
    """The ``X-Hub-Signature-256`` value of ``body`` (``sha256=<hex>``)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def create_app(surface: Surface, *, webhook_secret: str | None = None) -> Starlette:
    """The Starlette app serving the daemon's endpoints."""

    async def metrics(_: Request) -> Response:
        exposition = scrub.text(surface.metrics().decode("utf-8", errors="replace"))
        return Response(exposition.encode(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        ok, why = surface.healthy()
        return PlainTextResponse(f"{'ok' if ok else 'unhealthy'}: {why}\n",
                                 status_code=200 if ok else 503)

    async def readyz(_: Request) -> Response:
        ok, why = await surface.ready()
        why = scrub.text(why)
        return PlainTextResponse(f"{'ready' if ok else 'not ready'}: {why}\n",
                                 status_code=200 if ok else 503)

    async def status(_: Request) -> Response:
        return JSONResponse(scrub.value(surface.status()))

    return _guarded(Starlette(routes=[
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/status", status),
        Route("/hooks/reconcile", _webhook(surface, webhook_secret), methods=["POST"]),
        *(web_routes(surface.web) if surface.web is not None else ()),
    ]))


def _guarded(app: Starlette) -> Starlette:
    """``app`` behind the :class:`BodyGuard` (body and concurrency bounds)."""
    app.add_middleware(BodyGuard)
    return app


def _body_limit(method: str, path: str) -> int:
    return MAX_HOOK_BODY if method == "POST" and path == HOOK_PATH else MAX_OTHER_BODY


async def _refuse(send: Send, status: int, error: str, *,
                  headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """A JSON error answer that closes the connection (its body is not read)."""
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class BodyGuard:
    """ASGI middleware bounding every request before the app sees it: a declared
    ``Content-Length`` over the path's limit is refused (413) unread, a streamed body is
    cut at it (413; the app's ``receive`` then says the client left), at most
    :data:`MAX_IN_FLIGHT` requests run at once (the probes excepted; 503 beyond), and an
    answer sent before the request's body was read closes the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        limit = _body_limit(method, path)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        length = 0
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _refuse(send, 400, "Content-Length is not a number")
                return
            if length > limit:
                await _refuse(send, 413, f"body too large: {length} bytes, at most {limit}")
                return
        counted = path not in PROBES
        if counted and self.in_flight >= MAX_IN_FLIGHT:
            await _refuse(send, 503, "too many requests at once; try again",
                          headers=((b"retry-after", b"1"),))
            return
        read = 0
        body_done = length == 0 and b"transfer-encoding" not in headers
        cut = started = False

        async def bounded_receive() -> Message:
            nonlocal read, body_done, cut
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > limit:
                    cut = True
                    if not started:
                        await _refuse(send, 413, f"body too large: more than {limit} bytes")
                    return {"type": "http.disconnect"}
                if not message.get("more_body", False):
                    body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if cut:
                return  # the guard answered already
            if message["type"] == "http.response.start":
                started = True
                if not body_done:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"connection", b"close")]}
            await send(message)

        if counted:
            self.in_flight += 1
        try:
            await self.app(scope, bounded_receive, guarded_send)
        finally:
            if counted:
                self.in_flight -= 1


def _webhook(surface: Surface,
             secret: str | None) -> Callable[[Request], Awaitable[Response]]:
    """``POST /hooks/reconcile``: a signed push triggers a pass (each delivery once)."""
    deliveries: OrderedDict[str, None] = OrderedDict()
    bodies = asyncio.Semaphore(MAX_HOOK_BODIES)

    async def hook(request: Request) -> Response:
        if secret is None:
            return JSONResponse({"error": "webhook disabled: no secret configured"},
                                status_code=404)
        given = request.headers.get("x-hub-signature-256", "")
        if _SIGNATURE.fullmatch(given) is None:  # refused before a byte of the body is read
            return JSONResponse({"error": "missing or invalid X-Hub-Signature-256"},
                                status_code=401)
        if bodies.locked():
            return JSONResponse({"error": "too many webhook deliveries at once; try again"},
                                status_code=503, headers={"retry-after": "1"})
        async with bodies:
            mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
            size = 0
            try:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_HOOK_BODY:
                        return JSONResponse({"error": "body too large"}, status_code=413)
                    mac.update(chunk)
            except ClientDisconnect:
                return JSONResponse({"error": "the body did not arrive"}, status_code=400)
        expected = "sha256=" + mac.hexdigest()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return JSONResponse({"error": "missing or invalid X-Hub-Signature-256"},
                                status_code=401)
        delivery = request.headers.get("x-github-delivery")
        if delivery:
            if delivery in deliveries:
                return JSONResponse({"status": "duplicate delivery ignored"})
            deliveries[delivery] = None
            while len(deliveries) > _SEEN_DELIVERIES:
                deliveries.popitem(last=False)
        surface.trigger("webhook")
        return JSONResponse({"status": "reconcile triggered"}, status_code=202)

    return hook


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with deadlines: a connection whose request line and headers
    have not arrived within :data:`HEADER_TIMEOUT` seconds (of the connection, or of the
    first byte of the next request), or whose body has not within :data:`BODY_TIMEOUT`
    more, is closed. (Idle kept-alive connections: uvicorn's own ``timeout_keep_alive``.)
    """

    header_timeout = HEADER_TIMEOUT
    body_timeout = BODY_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        #: bytes of the request head (line and headers) received so far, and the last 3
        self._head = 0
        self._tail = b""
        self._since = time.monotonic()
        super().connection_made(transport)
        self._watch()
        if len(self.connections) > MAX_CONNECTIONS:
            self._evict(len(self.connections) - MAX_CONNECTIONS)

    def _evict(self, count: int) -> None:
        """Close the ``count`` oldest connections still waiting for a request head (a
        flood of idle or slow sockets): a new one (the kubelet's probe) gets its turn."""
        waiting = sorted((c for c in self.connections
                          if isinstance(c, GuardedH11) and c is not self
                          and c._phase == "headers" and not c.transport.is_closing()),
                         key=lambda c: c._since)
        for victim in waiting[:count]:
            victim._disarm()
            victim.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and not self._head_fits(data):
            self._disarm()
            self.logger.warning("Request head larger than %d bytes refused.",
                                MAX_HEADER_BYTES)
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                 b"content-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()
            return
        super().data_received(data)
        self._watch()

    def _head_fits(self, data: bytes) -> bool:
        """Whether the request head that ``data`` continues stays within
        :data:`MAX_HEADER_BYTES` (h11 bounds only a head that arrives in pieces)."""
        window = self._tail + data
        end = window.find(b"\r\n\r\n")
        if end >= 0:
            length = self._head - len(self._tail) + end + 4
            self._head, self._tail = 0, b""
            return length <= MAX_HEADER_BYTES
        self._head += len(data)
        self._tail = window[-3:]
        return self._head <= MAX_HEADER_BYTES

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Arm the deadline of the phase the connection is in (or none)."""
        if self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        phase: str | None = None
        if state is h11.IDLE and self.timeout_keep_alive_task is None:
            phase = "headers"  # a new connection, or the next request has begun
        elif state is h11.SEND_BODY:
            phase = "body"
        if phase == self._phase:
            return
        self._disarm()
        self._phase = phase
        if phase == "headers":
            self._since = time.monotonic()
        if phase is not None:
            seconds = self.header_timeout if phase == "headers" else self.body_timeout
            self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.debug("closing a connection whose %s did not arrive in time",
                              self._phase)
            self.transport.close()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Listening:
    """A running listener: its base URL, and how to stop it."""

    url: str
    server: uvicorn.Server
    #: the serving task (held: the event loop keeps only a weak reference to tasks)
    task: asyncio.Task[None]

    async def close(self) -> None:
        """Stop accepting, and give open connections :data:`SHUTDOWN_TIMEOUT` to end."""
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.shutdown(), SHUTDOWN_TIMEOUT)


async def serve(app: Starlette, listen: str) -> Listening:
    """Serve ``app`` on ``listen`` (``HOST:PORT``; port 0: a free one) on the running loop."""
    host, port = parse_listen(listen)
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror}") from exc
    sock.setblocking(False)
    # log_config=None: uvicorn's records go through the root handler of logs.configure
    # (JSON, scrubbed) instead of its own plain-text handler on stderr.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            log_config=None, http=GuardedH11,
                            timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
                            limit_concurrency=LIMIT_CONCURRENCY,
                            h11_max_incomplete_event_size=MAX_HEADER_BYTES)
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    return Listening(f"http://{shown}:{bound[1]}", server, task)
