"""The daemon's one HTTP listener: metrics, health, status and the git webhook.

``/metrics`` (Prometheus), ``/healthz`` (the process and its loop are alive),
``/readyz`` (manifests loaded once and the API reachable; not tied to leadership),
``/status`` (JSON of every manifest), ``POST /hooks/reconcile`` (a git push webhook,
HMAC-SHA256 signed in ``X-Hub-Signature-256`` as GitHub does; disabled, 404, without a
secret). The app only reads through :class:`Surface`; the daemon owns the state.
:func:`serve` runs the app with uvicorn on the daemon's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from reconciler.errors import ConfigError
from reconciler.listen import bind_socket, parse_listen

__all__ = ["MAX_HOOK_BODY", "Listening", "Surface", "create_app", "serve", "sign"]

MAX_HOOK_BODY = 1024 * 1024
_SEEN_DELIVERIES = 1024
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


def sign(body: bytes, secret: str) -> str:
    """The ``X-Hub-Signature-256`` value of ``body`` (``sha256=<hex>``)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def create_app(surface: Surface, *, webhook_secret: str | None = None) -> Starlette:
    """The Starlette app serving the daemon's endpoints."""

    async def metrics(_: Request) -> Response:
        return Response(surface.metrics(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        ok, why = surface.healthy()
        return PlainTextResponse(f"{'ok' if ok else 'unhealthy'}: {why}\n",
                                 status_code=200 if ok else 503)

    async def readyz(_: Request) -> Response:
        ok, why = await surface.ready()
        return PlainTextResponse(f"{'ready' if ok else 'not ready'}: {why}\n",
                                 status_code=200 if ok else 503)

    async def status(_: Request) -> Response:
        return JSONResponse(surface.status())

    return Starlette(routes=[
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/status", status),
        Route("/hooks/reconcile", _webhook(surface, webhook_secret), methods=["POST"]),
    ])


def _webhook(surface: Surface,
             secret: str | None) -> Callable[[Request], Awaitable[Response]]:
    """``POST /hooks/reconcile``: a signed push triggers a pass (each delivery once)."""
    deliveries: OrderedDict[str, None] = OrderedDict()

    async def hook(request: Request) -> Response:
        if secret is None:
            return JSONResponse({"error": "webhook disabled: no secret configured"},
                                status_code=404)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_HOOK_BODY:
                return JSONResponse({"error": "body too large"}, status_code=413)
        given = request.headers.get("x-hub-signature-256", "")
        if not given or not hmac.compare_digest(given.encode(), sign(body, secret).encode()):
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
                            log_config=None)
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    return Listening(f"http://{shown}:{bound[1]}", server, task)
