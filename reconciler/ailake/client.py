"""Async client for the four GoodData Cloud AI Lake "Services & Operations" endpoints.

Why a hand-written client and not ``gooddata-api-client``: the reconciler must classify
every failure exactly once, so that the engine can decide between "give up", "retry
later" and "look it up before doing anything" (DESIGN section 1). The generated client
neither retries nor tells an unanswered POST apart from a refused one, and it rejects an
unknown operation ``kind``. This module does, and nothing else: no state, no planning.

Endpoints (``spec/ailake-openapi.json``)::

    GET  /api/v1/ailake/services                                         list_services
    GET  /api/v1/ailake/services/{serviceId}/status                      service_status
    POST /api/v1/ailake/services/{serviceId}/commands/{commandName}/run  run_command
    GET  /api/v1/ailake/operations/{operationId}                         get_operation

Error classes raised (all from :mod:`reconciler.errors`):

- :class:`~reconciler.errors.PermanentError`: a 4xx other than 408/409/429 (401: token
  missing or wrong; 403: the organization lacks the ``AiLake`` entitlement or the token
  lacks MANAGE; 404: no such service or command; 400: a bad payload). Retrying the same
  request cannot help. Also raised for a client-side misconfiguration (bad URL scheme).
- :class:`~reconciler.errors.TemporaryError`: 408, 409 on a GET, 429, 5xx, timeouts and
  dropped connections on a GET, and a 200 whose body is not the JSON object we expect
  (proxies sometimes answer an HTML page with 200). GETs are retried here first
  (``get_retries``, capped exponential backoff with full jitter, never sooner than the
  server's ``Retry-After``/``X-RateLimit-Reset``); the error is raised when they run
  out. ``delay`` carries the server's requested wait, if it gave one. A requested wait
  longer than ``backoff_cap`` is not slept inside the call: the error is raised at once
  with that ``delay``, for the engine to schedule.
- :class:`~reconciler.errors.OutcomeUnknownError`: the run POST may have started the
  command but we cannot tell: a read timeout, a connection dropped after the request
  went out, a 5xx, a 408, or a 409 (an operation with this id already exists, possibly
  with a different body). The engine resolves it with ``GET /operations/{id}`` and never
  re-POSTs blindly. The run POST itself is retried here only when the server certainly
  did not process it: a 429, or a connection that failed before the request was sent
  (``ConnectError``, ``ConnectTimeout``, ``PoolTimeout``); when those retries run out
  the error is a ``TemporaryError`` (nothing ran).

Secrecy: the API token lives only in the ``Authorization`` header of the underlying
``httpx.AsyncClient``. It is not in any ``repr``, exception message, exception body,
log line or :class:`RequestRecord`; every text taken from the server or from ``httpx``
is scrubbed of it before it is stored in an exception.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
import structlog

from reconciler import __version__
from reconciler.errors import (
    ApiError,
    ConfigError,
    OutcomeUnknownError,
    PermanentError,
    TemporaryError,
)

__all__ = [
    "AiLakeClient",
    "ClientSettings",
    "Operation",
    "OperationFailure",
    "RequestRecord",
    "RunAccepted",
    "ServiceInfo",
    "TokenBucket",
]

log = structlog.get_logger("reconciler.ailake.client")

EP_SERVICES = "/api/v1/ailake/services"
EP_STATUS = "/api/v1/ailake/services/{serviceId}/status"
EP_RUN = "/api/v1/ailake/services/{serviceId}/commands/{commandName}/run"
EP_OPERATION = "/api/v1/ailake/operations/{operationId}"

#: How much of an error response body is kept in ``ApiError.body``.
BODY_LIMIT = 2000
#: Safety stop for a server that ignores ``page`` and never sends ``totalPages``.
MAX_PAGES = 10_000
_REDACTED = "***"

# Exceptions raised while the request certainly had not been sent yet: no connection was
# ever established (or none was free in the pool), so the server cannot have seen it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures of the transport that a retry may cure (on a GET).
_TRANSIENT_TRANSPORT = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
    httpx.DecodingError,
)


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ServiceInfo:
    """One entry of ``GET /services``: ``id`` (the JSON:API item id), ``name``, ``service_id``."""

    id: str
    name: str
    service_id: str


@dataclass(frozen=True)
class RunAccepted:
    """The answer to a run POST: the operation id to poll and its relative location."""

    operation_id: str
    location: str


@dataclass(frozen=True)
class OperationFailure:
    """The ``error`` object of a failed operation."""

    title: str
    status: int
    detail: str


@dataclass(frozen=True)
class Operation:
    """A long-running operation as the server reported it.

    ``status`` is ``pending``, ``succeeded`` or ``failed`` per the spec; any other value is
    kept as-is (and is not terminal). ``kind`` is an open string. ``raw`` is the JSON body.
    """

    id: str
    kind: str
    status: str
    result: Mapping[str, Any] | None
    error: OperationFailure | None
    raw: Mapping[str, Any]

    @property
    def terminal(self) -> bool:
        return self.status in ("succeeded", "failed")


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP attempt, for metrics: templated endpoint, method, status code or "error"."""

    endpoint: str
    method: str
    code: str
    duration: float


@dataclass(frozen=True)
class ClientSettings:
    """Connection, retry and rate-limit settings. ``token`` is never shown by ``repr``."""

    base_url: str
    token: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    connect_timeout: float = 10.0
    pool_timeout: float = 10.0
    ca_file: str | None = None
    verify: bool = True
    max_connections: int = 32
    rate_limit: float | None = None
    get_retries: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    post_retries: int = 3

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"API URL must start with http:// or https://: {self.base_url!r}")
        if self.token is not None and (
            not self.token
            or not self.token.isascii()
            or any(c.isspace() or not c.isprintable() for c in self.token)
        ):
            # Never echo the token: say what is wrong with it, not what it is.
            raise ConfigError(
                "API token must be non-empty printable ASCII without whitespace "
                "(check for a trailing newline in the token file)"
            )
        for name in ("timeout", "connect_timeout", "pool_timeout", "backoff_cap"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0")
        if self.backoff_base < 0:
            raise ConfigError("backoff_base must be >= 0")
        if self.max_connections < 1:
            raise ConfigError("max_connections must be >= 1")
        if self.get_retries < 0 or self.post_retries < 0:
            raise ConfigError("get_retries and post_retries must be >= 0")
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ConfigError("rate_limit must be > 0 requests per second")


# --------------------------------------------------------------------------- helpers


class TokenBucket:
    """Client-wide rate limiter: ``rate`` requests per second, burst ``max(1, rate)``.

    Reservation style: a caller takes its token at once (the balance may go negative) and
    then sleeps until that token would have been refilled, so concurrent callers queue up
    at ``1/rate`` spacing without a lock and each sleeps exactly once.
    """

    def __init__(
        self,
        rate: float,
        *,
        sleep: Callable[[float], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self._sleep = sleep
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def reserve(self) -> float:
        """Take one token; return how long the caller must wait before using it."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await self._sleep(wait)


def _parse_delay(value: str | None, *, now: float) -> float | None:
    """Seconds from a ``Retry-After`` value: delta-seconds or an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" dates: treat as UTC per RFC 9110
            return None
        return max(0.0, when.timestamp() - now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _server_delay(response: httpx.Response, *, now: float | None = None) -> float | None:
    """The wait the server asked for: ``Retry-After``, else ``X-RateLimit-Reset``.

    ``X-RateLimit-Reset`` is delta-seconds in the IETF draft but an epoch timestamp at
    some providers; a value above 10**9 is read as an epoch timestamp.
    """
    now = time.time() if now is None else now
    delay = _parse_delay(response.headers.get("retry-after"), now=now)
    if delay is not None:
        return delay
    reset = response.headers.get("x-ratelimit-reset")
    if reset is None:
        return None
    try:
        value = float(reset.strip())
    except ValueError:
        return None
    if math.isnan(value) or math.isinf(value):
        return None
    if value > 1e9:
        value -= now
    return max(0.0, value)


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


_HINTS: dict[int, str] = {
    400: "the request was rejected as malformed (payload too large, bad JSON or a "
    "non-string context value?)",
    401: "the API token is missing, invalid or expired (set RECONCILER_API_TOKEN or --token-file)",
    403: "forbidden: the organization probably lacks the AiLake entitlement, or the API "
    "token lacks the MANAGE permission",
    404: "not found (unknown service, command or operation?)",
}


# --------------------------------------------------------------------------- client


class AiLakeClient:
    """One ``httpx.AsyncClient`` with retries, classification, a rate limit and metrics.

    ``observer`` is called once per HTTP attempt (retries included; code ``"error"`` when
    no response came); an exception raised by it is logged and ignored. ``sleep`` is
    used for every wait (backoff and rate limit), so tests can inject a recorder;
    ``clock`` (a monotonic clock) drives the rate limiter.
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: Callable[[RequestRecord], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._token = settings.token
        self._observer = observer
        self._sleep = sleep
        self._bucket = (
            TokenBucket(settings.rate_limit, sleep=sleep, clock=clock)
            if settings.rate_limit is not None
            else None
        )
        verify: ssl.SSLContext | bool
        if not settings.verify:
            verify = False
        elif settings.ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=settings.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load CA file {settings.ca_file!r}: {exc}") from exc
        else:
            verify = True
        headers = {
            "User-Agent": f"ailake-reconciler/{__version__}",
            "Accept": "application/json",
        }
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        self._http = httpx.AsyncClient(
            base_url=settings.base_url,
            headers=headers,
            timeout=httpx.Timeout(
                settings.timeout, connect=settings.connect_timeout, pool=settings.pool_timeout
            ),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            verify=verify,
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"AiLakeClient(base_url={self.settings.base_url!r})"

    async def __aenter__(self) -> AiLakeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ----------------------------------------------------------------- public API

    async def list_services(self, *, page_size: int = 100) -> list[ServiceInfo]:
        """Every service, following pages ``0, 1, ...`` until a short page or ``totalPages``."""
        if not 1 <= page_size <= 500:
            raise ValueError("page_size must be between 1 and 500")
        services: list[ServiceInfo] = []
        seen: set[str] = set()
        for page in range(MAX_PAGES):
            response = await self._get(
                EP_SERVICES,
                EP_SERVICES,
                params={"page": page, "size": page_size, "metaInclude": "page"},
            )
            body = self._require_object(response, "GET", EP_SERVICES)
            data = body.get("data")
            if not isinstance(data, list):
                raise self._temporary(
                    "GET", EP_SERVICES, response, "answer has no 'data' list", body=True
                )
            for item in data:
                info = _service_info(item)
                if info is None:
                    log.warning("skipping malformed service item", page=page)
                elif info.id not in seen:
                    seen.add(info.id)
                    services.append(info)
            meta = body.get("meta")
            page_meta = meta.get("page") if isinstance(meta, dict) else None
            total_pages = page_meta.get("totalPages") if isinstance(page_meta, dict) else None
            number = page_meta.get("number") if isinstance(page_meta, dict) else None
            if len(data) < page_size:
                break
            if isinstance(total_pages, int) and page + 1 >= total_pages:
                break
            if isinstance(number, int) and number != page:
                # The server ignores 'page': more requests would repeat this one forever.
                log.warning("server ignored the page parameter", asked=page, got=number)
                break
        return services

    async def service_status(self, service_id: str) -> Mapping[str, Any] | None:
        """The service's ``status`` object (``None`` if the server says null).

        A missing service is a 404 and raises :class:`PermanentError`.
        """
        path = f"/api/v1/ailake/services/{_seg(service_id)}/status"
        response = await self._get(EP_STATUS, path)
        body = self._require_object(response, "GET", path)
        status = body.get("status")
        return status if isinstance(status, dict) else None

    async def run_command(
        self,
        service_id: str,
        command: str,
        *,
        operation_id: str,
        payload: Mapping[str, Any] | None,
        context: Mapping[str, str | None] | None,
    ) -> RunAccepted:
        """POST a run with our ``operation-id``; see the module docstring for the errors.

        A 409 raises :class:`OutcomeUnknownError`: an operation with this id already
        exists (maybe ours, from an earlier POST whose answer was lost; maybe with another
        body). Only ``GET /operations/{id}`` can tell, and that is the engine's job.
        """
        path = f"/api/v1/ailake/services/{_seg(service_id)}/commands/{_seg(command)}/run"
        body: dict[str, Any] = {}
        if payload is not None:
            body["payload"] = dict(payload)
        if context is not None:
            body["context"] = dict(context)
        content = json.dumps(
            body, separators=(",", ":"), ensure_ascii=False, default=_jsonable
        ).encode()
        headers = {"operation-id": operation_id, "Content-Type": "application/json"}
        method = "POST"
        retry = 0
        while True:
            try:
                response = await self._attempt(
                    method, EP_RUN, path, content=content, headers=headers
                )
            except _NOT_SENT as exc:
                # The request never left: retrying cannot run the command twice.
                if retry >= self.settings.post_retries:
                    raise self._transport_error(
                        TemporaryError, method, path, exc, "connection failed before sending"
                    ) from exc
                await self._sleep(self._backoff(retry, None))
                retry += 1
                continue
            except httpx.TransportError as exc:
                if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
                    raise self._transport_error(
                        PermanentError, method, path, exc, "request could not be built"
                    ) from exc
                # Read timeout, dropped connection, write error: the request (or part of
                # it) went out; the command may be running. Never re-POST blindly.
                raise self._transport_error(
                    OutcomeUnknownError,
                    method,
                    path,
                    exc,
                    "no answer to the run request; the command may have started",
                    operation_id=operation_id,
                ) from exc
            code = response.status_code
            if 200 <= code < 300:
                accepted_id = response.headers.get("operation-id") or operation_id
                location = response.headers.get("operation-location") or (
                    f"/api/v1/ailake/operations/{_seg(accepted_id)}"
                )
                return RunAccepted(operation_id=accepted_id, location=location)
            if code == 429:
                # Throttled: the server refused the request before processing it.
                delay = _server_delay(response)
                if retry >= self.settings.post_retries or (
                    delay is not None and delay > self.settings.backoff_cap
                ):
                    raise self._temporary(method, path, response, "rate limited")
                await self._sleep(self._backoff(retry, delay))
                retry += 1
                continue
            if code in (408, 409) or code >= 500:
                # The server answered, but the spec promises nothing about whether a 5xx
                # (or a 408 from some proxy) happened before or after the run started,
                # and a 409 means an operation with this id exists already. The engine
                # looks the id up (GET /operations/{id}) instead of re-POSTing.
                why = (
                    "an operation with this id already exists"
                    if code == 409
                    else "the server failed; the command may have started"
                )
                raise self._http_error(
                    OutcomeUnknownError, method, path, response, why, operation_id=operation_id
                )
            self._raise_permanent(method, path, response)

    async def get_operation(self, operation_id: str) -> Operation | None:
        """The operation, or ``None`` iff the server answers 404."""
        path = f"/api/v1/ailake/operations/{_seg(operation_id)}"
        response = await self._get(EP_OPERATION, path, allow_404=True)
        if response.status_code == 404:
            return None
        body = self._require_object(response, "GET", path)
        status = body.get("status")
        if not isinstance(status, str) or not status:
            raise self._temporary(
                "GET", path, response, "operation has no 'status' string", body=True
            )
        kind = body.get("kind")
        result = body.get("result")
        error: OperationFailure | None = None
        raw_error = body.get("error")
        if isinstance(raw_error, dict):
            error = _operation_failure(raw_error)
        elif status == "failed":
            error = OperationFailure(
                title="Operation failed", status=0, detail="the server gave no error details"
            )
        op_id = body.get("id")
        return Operation(
            id=op_id if isinstance(op_id, str) and op_id else operation_id,
            kind=kind if isinstance(kind, str) else "",
            status=status,
            result=result if isinstance(result, dict) else None,
            error=error,
            raw=body,
        )

    # ----------------------------------------------------------------- internals

    async def _get(
        self,
        endpoint: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        allow_404: bool = False,
    ) -> httpx.Response:
        """GET with retries of every transient failure; returns a 2xx (or allowed 404)."""
        method = "GET"
        retry = 0
        while True:
            try:
                response = await self._attempt(method, endpoint, path, params=params)
            except _TRANSIENT_TRANSPORT as exc:
                if retry >= self.settings.get_retries:
                    raise self._transport_error(
                        TemporaryError, method, path, exc, f"gave up after {retry + 1} attempts"
                    ) from exc
                await self._sleep(self._backoff(retry, None))
                retry += 1
                continue
            except httpx.TransportError as exc:
                raise self._transport_error(
                    PermanentError, method, path, exc, "request could not be built"
                ) from exc
            code = response.status_code
            error: TemporaryError
            if 200 <= code < 300 or (allow_404 and code == 404):
                if code == 404 or _json_object(response) is not None:
                    return response
                # A 200 that is not our JSON (an HTML page from a proxy, a truncated
                # body): transient by assumption, retried like a 503.
                error = self._temporary(
                    method, path, response, "answer is not a JSON object", body=True
                )
            elif code in (408, 409, 429) or code >= 500:
                error = self._temporary(method, path, response, f"HTTP {code}")
            else:
                self._raise_permanent(method, path, response)
            delay = error.delay
            if retry >= self.settings.get_retries or (
                delay is not None and delay > self.settings.backoff_cap
            ):
                # Out of retries, or the server asks for a longer wait than we would
                # sleep inside one call: hand it to the engine with the delay.
                raise error
            await self._sleep(self._backoff(retry, delay))
            retry += 1

    async def _attempt(
        self,
        method: str,
        endpoint: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One HTTP attempt: rate limit, send, read the whole body, report to the observer."""
        if self._bucket is not None:
            await self._bucket.acquire()
        started = time.perf_counter()
        code = "error"
        try:
            response = await self._http.request(
                method, path, params=params, content=content, headers=headers
            )
            code = str(response.status_code)
            return response
        finally:
            self._observe(RequestRecord(endpoint, method, code, time.perf_counter() - started))

    def _observe(self, record: RequestRecord) -> None:
        if self._observer is None:
            return
        try:
            self._observer(record)
        except Exception as exc:  # a metrics bug must not break API calls
            log.warning("request observer failed", error=type(exc).__name__)

    def _backoff(self, retry: int, server_delay: float | None) -> float:
        """Full jitter over ``min(cap, base * 2**retry)``, never below the server's delay."""
        ceiling = min(self.settings.backoff_cap, self.settings.backoff_base * 2.0**retry)
        delay = random.uniform(0.0, ceiling)
        if server_delay is not None:
            delay = max(delay, server_delay)
        return delay

    def _scrub(self, text: str) -> str:
        if self._token:
            text = text.replace(self._token, _REDACTED)
        return text

    def _require_object(self, response: httpx.Response, method: str, path: str) -> dict[str, Any]:
        body = _json_object(response)
        if body is None:
            raise self._temporary(method, path, response, "answer is not a JSON object", body=True)
        return body

    def _problem(self, response: httpx.Response) -> tuple[str | None, str | None, str | None]:
        """title, detail, trace id from problem+json (or a 429's ``{error, message}``)."""
        data = _json_object(response) or {}
        title = _str_or_none(data.get("title")) or _str_or_none(data.get("error"))
        detail = _str_or_none(data.get("detail")) or _str_or_none(data.get("message"))
        trace = _str_or_none(data.get("traceId")) or response.headers.get("x-gdc-trace-id")
        return (
            self._scrub(title) if title else None,
            self._scrub(detail) if detail else None,
            self._scrub(trace) if trace else None,
        )

    def _body_text(self, response: httpx.Response) -> str:
        text = response.content[: BODY_LIMIT * 4].decode("utf-8", errors="replace")
        if len(text) > BODY_LIMIT:
            text = text[:BODY_LIMIT] + "...(truncated)"
        return self._scrub(text)

    def _http_error(
        self,
        cls: type[ApiError],
        method: str,
        path: str,
        response: httpx.Response,
        why: str,
        **extra: Any,
    ) -> ApiError:
        title, detail, trace = self._problem(response)
        code = response.status_code
        parts = [f"{method} {path} -> {code}: {why}"]
        if title or detail:
            parts.append(" - ".join(p for p in (title, detail) if p))
        if trace:
            parts.append(f"traceId={trace}")
        if cls is TemporaryError:
            extra.setdefault("delay", _server_delay(response))
        return cls(
            self._scrub("; ".join(parts)),
            method=method,
            endpoint=path,
            status=code,
            title=title,
            detail=detail,
            trace_id=trace,
            body=self._body_text(response),
            **extra,
        )

    def _temporary(
        self, method: str, path: str, response: httpx.Response, why: str, *, body: bool = False
    ) -> TemporaryError:
        if body:
            why = f"{why} (content-type {response.headers.get('content-type', 'none')!r})"
        error = self._http_error(TemporaryError, method, path, response, why)
        assert isinstance(error, TemporaryError)
        return error

    def _raise_permanent(self, method: str, path: str, response: httpx.Response) -> NoReturn:
        code = response.status_code
        why = _HINTS.get(code, "the request was refused")
        if code == 401 and not self._token:
            why = "no API token configured (set RECONCILER_API_TOKEN or --token-file)"
        raise self._http_error(PermanentError, method, path, response, why)

    def _transport_error(
        self,
        cls: type[ApiError],
        method: str,
        path: str,
        exc: Exception,
        why: str,
        **extra: Any,
    ) -> ApiError:
        message = self._scrub(f"{method} {path}: {why}: {type(exc).__name__}: {exc}")
        return cls(message, method=method, endpoint=path, **extra)


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback: read-only mappings (e.g. ``MappingProxyType``) as objects."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"payload value of type {type(value).__name__} is not JSON serializable")


def _seg(value: str) -> str:
    """One URL path segment, percent-encoded (a '/' in an id stays inside the segment)."""
    return quote(value, safe="")


def _service_info(item: Any) -> ServiceInfo | None:
    if not isinstance(item, dict):
        return None
    item_id = item.get("id")
    attributes = item.get("attributes")
    attributes = attributes if isinstance(attributes, dict) else {}
    if not isinstance(item_id, str) or not item_id:
        return None
    name = attributes.get("name")
    service_id = attributes.get("serviceId")
    return ServiceInfo(
        id=item_id,
        name=name if isinstance(name, str) else "",
        service_id=service_id if isinstance(service_id, str) and service_id else item_id,
    )


def _operation_failure(raw: Mapping[str, Any]) -> OperationFailure:
    title = raw.get("title")
    detail = raw.get("detail")
    status = raw.get("status")
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    return OperationFailure(
        title=title if isinstance(title, str) else "",
        status=status if isinstance(status, int) and not isinstance(status, bool) else 0,
        detail=detail if isinstance(detail, str) else "",
    )
