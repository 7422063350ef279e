"""The daemon's one HTTP listener: metrics, health, status and the git webhook.

``/metrics`` (Prometheus), ``/healthz`` (the process and its loop are alive),
``/readyz`` (manifests loaded once and the API reachable; not tied to leadership),
``/status`` (JSON of every manifest), ``POST /hooks/reconcile`` (a git push webhook,
HMAC-SHA256 signed in ``X-Hub-Signature-256`` as GitHub does; disabled, 404, without a
secret). The app only reads through :class:`Surface`; the daemon owns the state.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

__all__ = ["MAX_HOOK_BODY", "Surface", "create_app", "sign"]

MAX_HOOK_BODY = 1024 * 1024
_SEEN_DELIVERIES = 1024


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
    deliveries: OrderedDict[str, None] = OrderedDict()

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

    async def hook(request: Request) -> Response:
        if webhook_secret is None:
            return JSONResponse({"error": "webhook disabled: no secret configured"},
                                status_code=404)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_HOOK_BODY:
                return JSONResponse({"error": "body too large"}, status_code=413)
        given = request.headers.get("x-hub-signature-256", "")
        if not given or not hmac.compare_digest(given.encode(),
                                                sign(body, webhook_secret).encode()):
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

    return Starlette(routes=[
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/status", status),
        Route("/hooks/reconcile", hook, methods=["POST"]),
    ])
