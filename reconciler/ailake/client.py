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

Error classes raised (all from :mod:`reconciler.errors`, chosen by its
:func:`~reconciler.errors.classify_status` and
:func:`~reconciler.errors.classify_transport`, whose docstrings hold the full table):

- :class:`~reconciler.errors.PermanentError`: a 4xx other than 408/409/429 (404: no such
  service or command; 400: a bad payload). Retrying the same request cannot help. Also
  raised for a request that cannot be built (bad URL scheme). 401 (token missing or
  wrong) and 403 (the organization lacks the ``AiLake`` entitlement or the token lacks
  MANAGE) raise its subclass :class:`~reconciler.errors.CredentialsError`.
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
  went out, an answer that cannot be decoded, a 5xx, a 408, or a 409 (an operation with
  this id already exists, possibly with a different body). The engine resolves it with
  ``GET /operations/{id}`` and never re-POSTs blindly. The run POST itself is retried
  here only when the server certainly did not process it: a 429, or a connection that
  failed before the request was sent (``ConnectError``, ``ConnectTimeout``,
  ``PoolTimeout``); when those retries run out the error is a ``TemporaryError``
  (nothing ran).

Secrecy: the API token lives only in the ``Authorization`` header of the underlying
``httpx.AsyncClient``. It is not in any ``repr``, exception message, exception body,
log line or :class:`RequestRecord`; every text taken from the server or from ``httpx``
is scrubbed of it before it is stored in an exception.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from reconciler import __version__
from reconciler.ailake.failures import Failures
from reconciler.ailake.ratelimit import TokenBucket
from reconciler.ailake.responses import (
    Operation,
    OperationFailure,
    RunAccepted,
    ServiceInfo,
    json_object,
    parse_operation,
    parse_services_page,
    run_accepted,
    segment,
)
from reconciler.errors import (
    IDEMPOTENT_METHODS,
    ApiError,
    ConfigError,
    OutcomeKind,
    classify,
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

#: Safety stop for a server that ignores ``page`` and never sends ``totalPages``.
MAX_PAGES = 10_000


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

    def tls_verify(self) -> ssl.SSLContext | bool:
        """What ``httpx`` verifies the server with; ConfigError if the CA file is bad."""
        if not self.verify:
            return False
        if self.ca_file is None:
            return True
        try:
            return ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load CA file {self.ca_file!r}: {exc}") from exc


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
        self._failures = Failures(settings.token)
        self._observer = observer
        self._sleep = sleep
        self._bucket = (
            TokenBucket(settings.rate_limit, sleep=sleep, clock=clock)
            if settings.rate_limit is not None
            else None
        )
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
            verify=settings.tls_verify(),
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
            listing = parse_services_page(self._require_object(response, "GET", EP_SERVICES))
            if listing is None:
                raise self._failures.bad_answer(
                    "GET", EP_SERVICES, response, "answer has no 'data' list"
                )
            for info in listing.items:
                if info is None:
                    log.warning("skipping malformed service item", page=page)
                elif info.id not in seen:
                    seen.add(info.id)
                    services.append(info)
            if len(listing.items) < page_size:
                break
            if listing.total_pages is not None and page + 1 >= listing.total_pages:
                break
            if listing.number is not None and listing.number != page:
                # The server ignores 'page': more requests would repeat this one forever.
                log.warning("server ignored the page parameter", asked=page, got=listing.number)
                break
        return services

    async def service_status(self, service_id: str) -> Mapping[str, Any] | None:
        """The service's ``status`` object (``None`` if the server says null).

        A missing service is a 404 and raises :class:`PermanentError`.
        """
        path = f"/api/v1/ailake/services/{segment(service_id)}/status"
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
        path = f"/api/v1/ailake/services/{segment(service_id)}/commands/{segment(command)}/run"
        response = await self._request(
            "POST",
            EP_RUN,
            path,
            retries=self.settings.post_retries,
            content=_run_body(payload, context),
            headers={"operation-id": operation_id, "Content-Type": "application/json"},
            operation_id=operation_id,
        )
        return run_accepted(response, operation_id)

    async def get_operation(self, operation_id: str) -> Operation | None:
        """The operation, or ``None`` iff the server answers 404."""
        path = f"/api/v1/ailake/operations/{segment(operation_id)}"
        response = await self._get(EP_OPERATION, path, allow_404=True)
        if response.status_code == 404:
            return None
        operation = parse_operation(self._require_object(response, "GET", path), operation_id)
        if operation is None:
            raise self._failures.bad_answer(
                "GET", path, response, "operation has no 'status' string"
            )
        return operation

    # ----------------------------------------------------------------- one call

    async def _get(
        self,
        endpoint: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        allow_404: bool = False,
    ) -> httpx.Response:
        """GET with retries of every transient failure; returns a 2xx JSON object (or an
        allowed 404)."""
        return await self._request(
            "GET",
            endpoint,
            path,
            retries=self.settings.get_retries,
            params=params,
            json_body=True,
            allow_404=allow_404,
        )

    async def _request(
        self,
        method: str,
        endpoint: str,
        path: str,
        *,
        retries: int,
        params: Mapping[str, str | int] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        json_body: bool = False,
        allow_404: bool = False,
        operation_id: str = "",
    ) -> httpx.Response:
        """Send until an answer is accepted (see :meth:`_failure`) or the failure is not
        worth another try (see :meth:`_retry_wait`), which is then raised."""
        retry = 0
        while True:
            cause: Exception | None = None
            try:
                response = await self._attempt(
                    method, endpoint, path, params=params, content=content, headers=headers
                )
            except (httpx.TransportError, httpx.DecodingError) as exc:
                cause = exc
                error = self._failures.no_answer(
                    method, path, exc, attempts=retry + 1, operation_id=operation_id
                )
            else:
                failure = self._failure(
                    method, path, response, json_body=json_body, allow_404=allow_404,
                    operation_id=operation_id,
                )
                if failure is None:
                    return response
                error = failure
            wait = self._retry_wait(error, retry, retries)
            if wait is None:
                raise error from cause
            await self._sleep(wait)
            retry += 1

    def _failure(
        self,
        method: str,
        path: str,
        response: httpx.Response,
        *,
        json_body: bool,
        allow_404: bool,
        operation_id: str,
    ) -> ApiError | None:
        """None for an answer to return, else the error it is (classified)."""
        code = response.status_code
        if 200 <= code < 300 or (allow_404 and code == 404):
            if code == 404 or not json_body or json_object(response) is not None:
                return None
            # A 200 that is not our JSON (an HTML page from a proxy, a truncated
            # body): transient by assumption, retried like a 503.
            return self._failures.bad_answer(method, path, response, "answer is not a JSON object")
        return self._failures.refused(method, path, response, operation_id=operation_id)

    def _retry_wait(self, error: ApiError, retry: int, retries: int) -> float | None:
        """The backoff before trying again after ``error``, or None to raise it."""
        outcome = classify(error)
        if outcome.kind is not OutcomeKind.TRANSIENT or retry >= retries:
            return None
        if error.method not in IDEMPOTENT_METHODS and not outcome.unsent:
            return None  # a POST that may have run is never sent again
        if outcome.delay is not None and outcome.delay > self.settings.backoff_cap:
            # The server asks for a longer wait than we would sleep inside one call:
            # hand it to the engine with the delay.
            return None
        return self._backoff(retry, outcome.delay)

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

    def _require_object(self, response: httpx.Response, method: str, path: str) -> dict[str, Any]:
        body = json_object(response)
        if body is None:
            raise self._failures.bad_answer(method, path, response, "answer is not a JSON object")
        return body


def _run_body(payload: Mapping[str, Any] | None, context: Mapping[str, str | None] | None) -> bytes:
    """The run POST's JSON: ``{"payload": ..., "context": ...}``, absent keys left out."""
    body: dict[str, Any] = {}
    if payload is not None:
        body["payload"] = dict(payload)
    if context is not None:
        body["context"] = dict(context)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=_jsonable).encode()


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback: read-only mappings (e.g. ``MappingProxyType``) as objects."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"payload value of type {type(value).__name__} is not JSON serializable")
