"""The web view's routes on the daemon's listener: pages, their live JSON, static files.

- ``GET /``: the overview (``?state=``, ``?label=key[=value]``, ``?name=`` filter it);
- ``GET /manifests/{name}``: one manifest (404 page for a name neither loaded nor recorded);
- ``GET /ui/overview.json`` and ``GET /ui/manifests/{name}.json``: what the page's script
  polls to update itself (an ``ETag`` of the data, so an unchanged state costs a 304);
- ``GET /ui/static/…``: the stylesheet and the script, shipped in the package.

Read-only: only GET (and HEAD) routes, nothing that triggers or retries. Every answer
carries :data:`SECURITY_HEADERS`: a Content-Security-Policy allowing no inline script or
style and nothing from elsewhere, ``nosniff``, no framing, no referrer. Templates autoescape
everything. A failure while building a page is logged and answered with a plain error page,
never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2
import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler.observe.web.data import OverviewFacts, WebSurface
from reconciler.observe.web.manifest_page import manifest_page
from reconciler.observe.web.pages import STATES, Filters, OverviewPage, overview_page
from reconciler.observe.web.render import Fragments, etag, json_body

__all__ = ["CSP", "SECURITY_HEADERS", "web_routes"]

log = structlog.get_logger("reconciler.observe.web")

HERE = Path(__file__).resolve().parent
TEMPLATES, STATIC = HERE / "templates", HERE / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS: Mapping[str, str] = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}
#: how often the page's script asks for news (milliseconds)
POLL_MS = 5000
#: the longest manifest name shown back on a 404 page
MAX_NAME = 253

Page = Callable[[Request], Awaitable[Response]]


def environment() -> jinja2.Environment:
    """The templates, autoescaped; an undefined name is an error, never an empty text."""
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)


class Secured:
    """ASGI wrapper adding :data:`SECURITY_HEADERS` to every answer of ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.decode().lower() not in SECURITY_HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_secured)


class _Timing:
    """How long each step of a page took, for its ``Server-Timing`` header (the browser's
    developer tools and ``bench/bench_web.py`` show it)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self._laps.append((name, now - self._last))
        self._last = now

    def header(self) -> str:
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in self._laps)


def _json(request: Request, body: bytes) -> Response:
    """``body`` (JSON) with its ETag; 304 when the client has it already."""
    tag = etag(body)
    headers = {"etag": tag, "cache-control": "no-cache"}
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def _small_json(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


class _Pages:
    """The handlers of the web view over one surface."""

    def __init__(self, surface: WebSurface) -> None:
        self.surface = surface
        self.env = environment()
        self.fragments = Fragments(self.env)

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(poll_ms=POLL_MS, **values)
        return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})

    def _overview(self, facts: OverviewFacts, request: Request) -> OverviewPage:
        return overview_page(facts, Filters.of(request.query_params),
                             views=self.fragments.views)

    async def overview(self, request: Request) -> Response:
        clock = _Timing()
        facts = self.surface.overview()  # on the loop, as /status: a consistent moment
        clock.lap("facts")

        def build() -> HTMLResponse:  # off the event loop: 10,000 rows take a while
            page = self._overview(facts, request)
            clock.lap("rows")
            body = json_body(self.fragments, page.rows, page.live())
            answer = self.render("overview.html", page=page, title=page.title,
                                 states=STATES, chunks=self.fragments.chunks(page.rows),
                                 live="/ui/overview.json", etag=etag(body))
            clock.lap("html")
            answer.headers["server-timing"] = clock.header()
            return answer

        return await asyncio.to_thread(build)

    async def overview_json(self, request: Request) -> Response:
        clock = _Timing()
        facts = self.surface.overview()
        clock.lap("facts")

        def build() -> bytes:
            page = self._overview(facts, request)
            clock.lap("rows")
            body = json_body(self.fragments, page.rows, page.live())
            clock.lap("json")
            return body

        answer = _json(request, await asyncio.to_thread(build))
        answer.headers["server-timing"] = clock.header()
        return answer

    async def manifest(self, request: Request) -> Response:
        name = request.path_params["name"]
        facts = self.surface.manifest(name)
        if facts is None:
            return self.render("not_found.html", 404, title="not found — ailake-reconciler",
                               name=name[:MAX_NAME], live="")
        page = manifest_page(facts)
        return self.render("manifest.html", page=page, title=page.title,
                           live=f"/ui/manifests/{page.name}.json",
                           etag=etag(_small_json(page.live())))

    async def manifest_json(self, request: Request) -> Response:
        facts = self.surface.manifest(request.path_params["name"])
        if facts is None:
            return JSONResponse({"error": "no such manifest"}, status_code=404)
        return _json(request, _small_json(manifest_page(facts).live()))

    def guarded(self, page: Page) -> Page:
        """``page`` with the security headers, and an error page instead of a traceback."""
        async def handle(request: Request) -> Response:
            try:
                response = await page(request)
            except Exception as exc:  # a page must never show a traceback
                log.error("web_page_failed", path=request.url.path,
                          error_type=type(exc).__name__, error=str(exc))
                response = self.render("error.html", 500, title="error — ailake-reconciler",
                                       live="")
            response.headers.update(SECURITY_HEADERS)
            return response

        return handle


def web_routes(surface: WebSurface) -> list[BaseRoute]:
    """The routes of the web view over ``surface`` (read only)."""
    pages = _Pages(surface)
    return [
        Route("/", pages.guarded(pages.overview)),
        Route("/manifests/{name}", pages.guarded(pages.manifest)),
        Route("/ui/overview.json", pages.guarded(pages.overview_json)),
        Route("/ui/manifests/{name}.json", pages.guarded(pages.manifest_json)),
        Mount("/ui/static", app=Secured(StaticFiles(directory=STATIC)), name="static"),
    ]
