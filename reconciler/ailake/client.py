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
goes through the one scrubber (:mod:`reconciler.model.scrub`: the token, every secret
registered with it, bearer-looking values) before it is put in an exception or an
:class:`Operation`.

Bounds: every answer body is read up to ``max_response_bytes`` (1 MiB by default): a
``Content-Length`` above it is refused before a byte of the body is read, a longer body
(chunked, or compressed: decoding stops there too) is cut there and the connection
dropped. Such an answer is an error naming its size (a 2xx to a GET: transient, as any
answer that is not our JSON; a non-2xx: classified by its status as always; the 2xx of a
run POST is accepted, its body is not needed), and nothing of the body is kept. One
attempt, from sending to the last byte of the answer, takes at most ``pool_timeout +
connect_timeout + 2 * timeout`` seconds (a fenced POST: ``within``), however slowly a
server drips its answer.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from reconciler.ailake.failures import Failures
from reconciler.ailake.pools import ShardedTransport
from reconciler.ailake.ratelimit import (
    AIMD_DEFAULT_CEILING,
    AIMD_DEFAULT_START,
    AdaptiveLimiter,
    TokenBucket,
)
from reconciler.ailake.responses import (
    ACCEPTED_ENCODINGS,
    MAX_RESPONSE_BYTES,
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
from reconciler.ailake.transport import RequestRecord, Transport
from reconciler.errors import ConfigError
from reconciler.version import __version__

__all__ = [
    "AdaptiveLimiter",
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
    #: requests per second at most (None: no limit); with ``adaptive_rate``, where the
    #: adaptive limiter starts (None: ``AIMD_DEFAULT_START``)
    rate_limit: float | None = None
    #: adapt the rate to the API (AIMD, :class:`~reconciler.ailake.ratelimit.AdaptiveLimiter`):
    #: grow while answers are fast and ``X-RateLimit-Remaining`` is high, halve on a 429
    #: (honouring ``Retry-After``), back off when answers get slow
    adaptive_rate: bool = False
    #: the most an adaptive rate grows to (None: ``AIMD_DEFAULT_CEILING``)
    rate_ceiling: float | None = None
    get_retries: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    post_retries: int = 3
    #: the largest answer body read; a larger one is an error (nothing of it kept)
    max_response_bytes: int = MAX_RESPONSE_BYTES

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
        if self.max_response_bytes < 1024:
            raise ConfigError("max_response_bytes must be >= 1024")
        if self.get_retries < 0 or self.post_retries < 0:
            raise ConfigError("get_retries and post_retries must be >= 0")
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ConfigError("rate_limit must be > 0 requests per second")
        if self.rate_ceiling is not None and not self.rate_ceiling > 0:
            raise ConfigError("rate_ceiling must be > 0 requests per second")

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
        self._bucket: TokenBucket | None = None
        if settings.adaptive_rate:
            start = settings.rate_limit or AIMD_DEFAULT_START
            ceiling = max(start, settings.rate_ceiling or AIMD_DEFAULT_CEILING)
            self._bucket = AdaptiveLimiter(start, ceiling=ceiling, sleep=sleep, clock=clock)
        elif settings.rate_limit is not None:
            self._bucket = TokenBucket(settings.rate_limit, sleep=sleep, clock=clock)
        headers = {
            "User-Agent": f"ailake-reconciler/{__version__}",
            "Accept": "application/json",
            "Accept-Encoding": ACCEPTED_ENCODINGS,
        }
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        verify = settings.tls_verify()
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
            transport=transport or ShardedTransport(max_connections=settings.max_connections,
                                                    verify=verify),
            follow_redirects=False,
        )
        self._transport = Transport(settings, self._http, self._failures, bucket=self._bucket,
                                    observer=observer, sleep=sleep)

    def __repr__(self) -> str:
        return f"AiLakeClient(base_url={self.settings.base_url!r})"

    async def __aenter__(self) -> AiLakeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def rate_limit(self) -> float | None:
        """Requests per second allowed now (adaptive: as it stands; None: no limit)."""
        return self._bucket.current_rate if self._bucket is not None else None

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
        within: float | None = None,
    ) -> RunAccepted:
        """POST a run with our ``operation-id``; see the module docstring for the errors.

        A 409 raises :class:`OutcomeUnknownError`: an operation with this id already
        exists (maybe ours, from an earlier POST whose answer was lost; maybe with another
        body). Only ``GET /operations/{id}`` can tell, and that is the engine's job.
        ``within``: the request must end within this many seconds (a leader's lease): one
        attempt, its timeout capped to it, no retry inside the call.
        """
        path = f"/api/v1/ailake/services/{segment(service_id)}/commands/{segment(command)}/run"
        response = await self._transport.request(
            "POST",
            EP_RUN,
            path,
            retries=self.settings.post_retries if within is None else 0,
            content=_run_body(payload, context),
            headers={"operation-id": operation_id, "Content-Type": "application/json"},
            operation_id=operation_id,
            read_within=None if within is None else min(within, self.settings.timeout),
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
        return await self._transport.request(
            "GET",
            endpoint,
            path,
            retries=self.settings.get_retries,
            params=params,
            json_body=True,
            allow_404=allow_404,
        )

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
