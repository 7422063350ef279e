"""The emulator's HTTP face: the four AI Lake paths, the ``/_emulator/`` admin paths, faults.

``create_app`` returns a Starlette application serving exactly the Services & Operations
paths of ``schemas/ailake-openapi.json`` with the policies of ``spec/NOTES.md``. Fault
injection (503, 429 with ``Retry-After``, dropped connections, latency) wraps only those four
paths and is decided in ``EmulatorApp.__call__``, the outermost ASGI layer: that is the one
place that still holds the server's own ``send`` callable, which a dropped connection needs
to reach the TCP transport and close it without an answer after the request was processed.
The same layer counts every API request per route template (``/_emulator/requests``) and,
under ``echoAuthorization``, puts the request's ``Authorization`` header where ``problem``
can reach it (a context variable), so every problem+json carries it. The other adversary
modes are decided by ``EmulatorState``; only ``holdBeforeExecute`` lives in ``run_command``,
which holds the request open, executes, and then answers into a possibly closed connection.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconciler.ailake.emulator.config import EmulatorConfig
from reconciler.ailake.emulator.state import Conflict, EmulatorState
from reconciler.errors import ConfigError

__all__ = [
    "MAX_PAYLOAD_CHARS",
    "SERVICE_TYPE",
    "DroppedConnection",
    "EmulatorApp",
    "create_app",
    "route_key",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

API_PREFIX = "/api/v1/ailake"
SERVICE_TYPE = "aiLakeService"
MAX_PAYLOAD_CHARS = 15000
RATE_LIMIT = 100
ADMIN_PREFIX = "/_emulator/"
_ROUTE_TEMPLATES = (
    (re.compile(r"^/api/v1/ailake/services$"), f"{API_PREFIX}/services"),
    (
        re.compile(r"^/api/v1/ailake/services/[^/]+/status$"),
        f"{API_PREFIX}/services/{{serviceId}}/status",
    ),
    (
        re.compile(r"^/api/v1/ailake/services/[^/]+/commands/[^/]+/run$"),
        f"{API_PREFIX}/services/{{serviceId}}/commands/{{commandName}}/run",
    ),
    (re.compile(r"^/api/v1/ailake/operations/.+$"), f"{API_PREFIX}/operations/{{operationId}}"),
)
_API_PATHS = tuple(pattern for pattern, _ in _ROUTE_TEMPLATES)
UNMATCHED_ROUTE = "(unmatched)"

# The Authorization header of the request being answered, set only under echoAuthorization.
_ECHO_AUTHORIZATION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "emulator_echo_authorization", default=None
)


class DroppedConnection(ConnectionError):
    """Raised to an in-process (ASGI transport) client when a drop fault hits its request.

    Over a real socket the emulator closes the TCP connection instead; this is only the
    fallback when there is no transport to close.
    """


def is_api_path(path: str) -> bool:
    """True for the four AI Lake paths, the only ones faults apply to."""
    return any(pattern.match(path) for pattern in _API_PATHS)


def route_key(method: str, path: str) -> str:
    """``"METHOD template"`` of a request, as ``/_emulator/requests`` counts it."""
    for pattern, template in _ROUTE_TEMPLATES:
        if pattern.match(path):
            return f"{method} {template}"
    return f"{method} {UNMATCHED_ROUTE}"


def _with_echo(text: str) -> str:
    echo = _ECHO_AUTHORIZATION.get()
    return f"{text} (request Authorization: {echo})" if echo is not None else text


def problem(
    status: int, title: str, detail: str, headers: Mapping[str, str] | None = None
) -> Response:
    """An ``application/problem+json`` answer with a fresh trace id (body and header).

    Under ``echoAuthorization`` the ``detail`` ends with the request's ``Authorization``.
    """
    detail = _with_echo(detail)
    trace_id = uuid.uuid4().hex
    body = {"title": title, "status": status, "detail": detail, "traceId": trace_id}
    all_headers = {"X-GDC-TRACE-ID": trace_id, **(headers or {})}
    return Response(
        content=json.dumps(body),
        status_code=status,
        headers=all_headers,
        media_type="application/problem+json",
    )


def throttled(retry_after: int) -> Response:
    """The 429 answer: plain JSON ``{error, message}`` plus the rate-limit headers."""
    return JSONResponse(
        {
            "error": "Too Many Requests",
            "message": _with_echo(f"Rate limit exceeded; retry after {retry_after} s"),
        },
        status_code=429,
        headers={
            "Retry-After": str(retry_after),
            "X-RateLimit-Limit": str(RATE_LIMIT),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(retry_after),
        },
    )


def _state(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


@dataclass(frozen=True)
class _Invalid:
    """Why a request is malformed: the ``detail`` of its 400 answer."""

    detail: str


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int | _Invalid:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        return _Invalid(f"query parameter {name} must be an integer, got {raw!r}")
    if not low <= value <= high:
        return _Invalid(f"query parameter {name} must be between {low} and {high}, got {value}")
    return value


async def list_services(request: Request) -> Response:
    """``GET /api/v1/ailake/services``: JSON:API list, zero-based ``page``, ``size`` 1..500."""
    page = _int_param(request, "page", 0, 0, 2**31 - 1)
    if isinstance(page, _Invalid):
        return problem(400, "Bad Request", page.detail)
    size = _int_param(request, "size", 50, 1, 500)
    if isinstance(size, _Invalid):
        return problem(400, "Bad Request", size.detail)
    raw_meta = request.query_params.getlist("metaInclude")
    if len(set(raw_meta)) != len(raw_meta):
        return problem(400, "Bad Request", "query parameter metaInclude must have unique items")
    meta_include = {part.strip() for raw in raw_meta for part in raw.split(",")}
    services = _state(request).config.services
    start = page * size
    chunk = services[start : start + size]
    page_info: dict[str, int] = {"number": page, "size": size}
    if meta_include & {"page", "all", "ALL"}:
        page_info["totalElements"] = len(services)
        page_info["totalPages"] = math.ceil(len(services) / size)
    return JSONResponse(
        {
            "data": [
                {
                    "id": service.id,
                    "type": SERVICE_TYPE,
                    "attributes": {"name": service.name, "serviceId": service.id},
                }
                for service in chunk
            ],
            "links": {"self": str(request.url)},
            "meta": {"page": page_info},
        }
    )


async def service_status(request: Request) -> Response:
    """``GET /api/v1/ailake/services/{serviceId}/status``: ``{status: object|null}``."""
    service_id = request.path_params["serviceId"]
    service = _state(request).config.service(service_id)
    if service is None:
        return problem(404, "Not Found", f"AI Lake service {service_id} not found")
    status = dict(service.status) if service.status is not None else None
    return JSONResponse({"status": status})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_run_body(raw: bytes) -> dict[str, Any] | _Invalid:
    if not raw.strip():
        return _Invalid("request body is required: a JSON object {context?, payload?}")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        return _Invalid(f"request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return _Invalid("request body must be a JSON object {context?, payload?}")
    return _invalid_context(body.get("context")) or _invalid_payload(body.get("payload")) or body


def _invalid_context(context: Any) -> _Invalid | None:
    if context is None:
        return None
    if not isinstance(context, dict):
        return _Invalid("context must be an object of string (or null) values")
    for key, value in context.items():
        if value is not None and not isinstance(value, str):
            return _Invalid(f"context.{key} must be a string or null")
    return None


def _invalid_payload(payload: Any) -> _Invalid | None:
    if payload is None:
        return None
    if not isinstance(payload, dict):
        return _Invalid("payload must be a JSON object")
    length = len(json.dumps(payload, separators=(",", ":")))
    if length > MAX_PAYLOAD_CHARS:
        return _Invalid(
            f"payload is {length} characters as compact JSON; the limit is {MAX_PAYLOAD_CHARS}"
        )
    return None


async def run_command(request: Request) -> Response:
    """``POST .../services/{serviceId}/commands/{commandName}/run``: 202 + operation headers."""
    state = _state(request)
    service_id = request.path_params["serviceId"]
    command_name = request.path_params["commandName"]
    service = state.config.service(service_id)
    if service is None:
        return problem(404, "Not Found", f"AI Lake service {service_id} not found")
    command = service.commands.get(command_name)
    if command is None:
        return problem(
            404, "Not Found", f"command {command_name!r} not found in service {service_id}"
        )
    body = _parse_run_body(await request.body())
    if isinstance(body, _Invalid):
        return problem(400, "Bad Request", body.detail)
    operation_id = (request.headers.get("operation-id") or "").strip() or None
    hold = state.hold_seconds()
    if hold > 0:
        # holdBeforeExecute: answer nothing for a while (the client's read timeout may fire
        # and it may go), then really execute, then answer. The answer goes into a
        # connection that may be closed: uvicorn drops writes to a disconnected client.
        await asyncio.sleep(hold)
    outcome = state.run(service, command, body, operation_id)
    if isinstance(outcome, Conflict):
        return problem(409, "Conflict", outcome.detail)
    op_id = outcome.header_id
    return Response(
        status_code=202,
        headers={
            "operation-id": op_id,
            "operation-location": f"{API_PREFIX}/operations/{quote(op_id, safe='')}",
        },
    )


async def get_operation(request: Request) -> Response:
    """``GET /api/v1/ailake/operations/{operationId}``: pending, succeeded or failed."""
    operation_id = request.path_params["operationId"]
    view = _state(request).operation(
        operation_id, authorization=request.headers.get("authorization")
    )
    if view is None:
        return problem(404, "Not Found", f"operation {operation_id} not found")
    return JSONResponse(view)


async def admin_operations(request: Request) -> Response:
    """``GET /_emulator/operations``: every operation with its body, status and POST count."""
    return JSONResponse(_state(request).list_operations())


async def admin_executions(request: Request) -> Response:
    """``GET /_emulator/executions``: one entry per execution that really started."""
    return JSONResponse(_state(request).list_executions())


async def admin_get_faults(request: Request) -> Response:
    """``GET /_emulator/faults``: the fault settings in force."""
    return JSONResponse(_state(request).faults.to_dict())


async def admin_put_faults(request: Request) -> Response:
    """``PUT /_emulator/faults``: change some or all fault keys; answers the new settings."""
    try:
        changes = json.loads(await request.body(), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        return problem(400, "Bad Request", f"body is not valid JSON: {exc}")
    try:
        faults = _state(request).set_faults(changes)
    except ConfigError as exc:
        return problem(400, "Bad Request", str(exc))
    return JSONResponse(faults.to_dict())


async def admin_requests(request: Request) -> Response:
    """``GET /_emulator/requests``: ``{total, routes: {"METHOD template": count}}``."""
    return JSONResponse(_state(request).request_counts())


async def admin_reset_requests(request: Request) -> Response:
    """``DELETE /_emulator/requests``: the request counts back to zero."""
    _state(request).reset_requests()
    return Response(status_code=204)


async def admin_reset(request: Request) -> Response:
    """``POST /_emulator/reset``: forget operations, executions, request counts; faults back."""
    _state(request).reset()
    return Response(status_code=204)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    title = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "Error")
    detail = exc.detail if exc.detail and exc.detail != title else f"{request.url.path}: {title}"
    return problem(exc.status_code, title, detail, headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    return problem(500, "Internal Server Error", f"{type(exc).__name__}: {exc}")


async def _discard(message: Message) -> None:
    """A ``send`` that throws the answer away (a dropped connection never delivers it)."""


class EmulatorApp(Starlette):
    """Starlette app whose outermost ``__call__`` applies faults and the bearer token."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        state: EmulatorState = self.state.emulator
        path: str = scope["path"]
        if path.startswith(ADMIN_PREFIX):
            await super().__call__(scope, receive, send)
            return
        state.count_request(route_key(scope["method"], path))
        echo = None
        if state.faults.echo_authorization:
            given = dict(scope.get("headers") or []).get(b"authorization")
            echo = given.decode("latin-1") if given is not None else None
        token = _ECHO_AUTHORIZATION.set(echo)
        try:
            await self._faulted(scope, receive, send)
        finally:
            _ECHO_AUTHORIZATION.reset(token)

    async def _faulted(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: EmulatorState = self.state.emulator
        if not is_api_path(scope["path"]):
            await self._authorized(scope, receive, send)
            return
        faults = state.faults
        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        if state.roll(faults.error_rate):
            response = problem(
                503, "Service Unavailable", "injected fault: the service is unavailable"
            )
            await response(scope, receive, send)
            return
        if state.roll(faults.throttle_rate):
            await throttled(faults.retry_after)(scope, receive, send)
            return
        if state.roll(faults.drop_rate):
            await self._authorized(scope, receive, _discard)
            await _drop_connection(send)
            return
        await self._authorized(scope, receive, send)

    async def _authorized(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: EmulatorState = self.state.emulator
        path: str = scope["path"]
        if state.token is not None and not path.startswith(ADMIN_PREFIX):
            expected = f"Bearer {state.token}".encode()
            given = dict(scope.get("headers") or []).get(b"authorization")
            if given is None or not hmac.compare_digest(given, expected):
                detail = "missing bearer token" if given is None else "invalid bearer token"
                response = problem(
                    401, "Unauthorized", detail, {"WWW-Authenticate": 'Bearer realm="ailake"'}
                )
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def _drop_connection(send: Send) -> None:
    """Close the client's TCP connection without an answer (uvicorn), or raise in-process."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None or not isinstance(transport, asyncio.BaseTransport):
        raise DroppedConnection("injected fault: connection dropped after processing")
    transport.close()
    # Let connection_lost run so uvicorn sees the client gone and does not answer 500.
    for _ in range(10):
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0)


def create_app(config: EmulatorConfig, *, token: str | None = None) -> Starlette:
    """Build the emulator app; ``token`` overrides ``config.token``.

    The state object is ``app.state.emulator`` (an ``EmulatorState``).
    """
    routes = [
        Route(f"{API_PREFIX}/services", list_services, methods=["GET"]),
        Route(f"{API_PREFIX}/services/{{serviceId}}/status", service_status, methods=["GET"]),
        Route(
            f"{API_PREFIX}/services/{{serviceId}}/commands/{{commandName}}/run",
            run_command,
            methods=["POST"],
        ),
        Route(f"{API_PREFIX}/operations/{{operationId:path}}", get_operation, methods=["GET"]),
        Route("/_emulator/operations", admin_operations, methods=["GET"]),
        Route("/_emulator/executions", admin_executions, methods=["GET"]),
        Route("/_emulator/faults", admin_get_faults, methods=["GET"]),
        Route("/_emulator/faults", admin_put_faults, methods=["PUT"]),
        Route("/_emulator/requests", admin_requests, methods=["GET"]),
        Route("/_emulator/requests", admin_reset_requests, methods=["DELETE"]),
        Route("/_emulator/reset", admin_reset, methods=["POST"]),
    ]
    app = EmulatorApp(
        routes=routes,
        exception_handlers={HTTPException: _http_exception, Exception: _server_error},
    )
    app.state.emulator = EmulatorState(
        config=config, token=token if token is not None else config.token
    )
    return app
