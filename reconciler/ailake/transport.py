"""The AI Lake client's transport: the retry loop, one bounded HTTP attempt, the rate
limit and the per-attempt observer.

Split out of :mod:`reconciler.ailake.client` (see its docstring for the error classes,
the bounds and the secrecy rules); :class:`~reconciler.ailake.client.AiLakeClient` holds
one :class:`Transport`, and re-exports :class:`RequestRecord`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import structlog

from reconciler.ailake.failures import Failures
from reconciler.ailake.ratelimit import TokenBucket
from reconciler.ailake.responses import OVERSIZE, decode_body, json_object, server_delay
from reconciler.errors import IDEMPOTENT_METHODS, ApiError, OutcomeKind, classify

if TYPE_CHECKING:
    from reconciler.ailake.client import ClientSettings

__all__ = ["RequestRecord", "Transport"]

log = structlog.get_logger("reconciler.ailake.client")


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP attempt, for metrics: templated endpoint, method, status code or "error"."""

    endpoint: str
    method: str
    code: str
    duration: float


class Transport:
    """Sends requests for an :class:`~reconciler.ailake.client.AiLakeClient` over its
    ``httpx.AsyncClient``: retries, classification, the rate limit, the observer."""

    def __init__(
        self,
        settings: ClientSettings,
        http: httpx.AsyncClient,
        failures: Failures,
        *,
        bucket: TokenBucket | None,
        observer: Callable[[RequestRecord], None] | None,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self._http = http
        self._failures = failures
        self._bucket = bucket
        self._observer = observer
        self._sleep = sleep

    async def request(
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
        read_within: float | None = None,
    ) -> httpx.Response:
        """Send until an answer is accepted (see :meth:`_failure`) or the failure is not
        worth another try (see :meth:`_retry_wait`), which is then raised."""
        retry = 0
        while True:
            cause: Exception | None = None
            try:
                response = await self._attempt(
                    method, endpoint, path, params=params, content=content, headers=headers,
                    read_within=read_within,
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
        if OVERSIZE in response.extensions and 200 <= code < 300 and json_body:
            return self._failures.too_large(method, path, response)
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
        read_within: float | None = None,
    ) -> httpx.Response:
        """One HTTP attempt: rate limit, send, read the body (bounded), report to the
        observer."""
        if self._bucket is not None:
            await self._bucket.acquire()
        started = time.perf_counter()
        code = "error"
        answered: httpx.Response | None = None
        unanswered = False
        s = self.settings
        request = self._http.build_request(
            method, path, params=params, content=content, headers=headers,
            timeout=(httpx.USE_CLIENT_DEFAULT if read_within is None
                     else httpx.Timeout(read_within)),
        )
        total = (read_within if read_within is not None
                 else s.pool_timeout + s.connect_timeout + 2 * s.timeout)
        try:
            try:
                async with asyncio.timeout(total):
                    response = await self._bounded(request)
            except TimeoutError:
                raise httpx.ReadTimeout(
                    f"no complete answer within {total:g} s", request=request) from None
            code = str(response.status_code)
            answered = response
            return response
        except httpx.TransportError:
            unanswered = True
            raise
        finally:
            elapsed = time.perf_counter() - started
            if self._bucket is not None and (answered is not None or unanswered):
                self._bucket.observe(**_rate_signals(elapsed, answered))
            self._observe(RequestRecord(endpoint, method, code, elapsed))

    async def _bounded(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read its answer's body up to ``max_response_bytes``
        (raw and decoded); a longer one is dropped, noted in ``extensions[OVERSIZE]``."""
        limit = self.settings.max_response_bytes
        streamed = await self._http.send(request, stream=True)
        try:
            declared = _header_int(streamed, "content-length")
            oversize: str | None = None
            raw = bytearray()
            # an in-memory answer (a mock transport) was read and decoded already
            loaded = streamed.is_stream_consumed
            if loaded:
                raw += streamed.content
                if len(raw) > limit:
                    oversize = f"of {len(raw)} bytes (limit {limit} bytes)"
            elif declared is not None and declared > limit:
                oversize = f"of {declared} bytes (limit {limit} bytes)"
            else:
                async for chunk in streamed.aiter_raw():
                    raw += chunk
                    if len(raw) > limit:
                        oversize = f"of more than {limit} bytes (limit {limit} bytes)"
                        break
        finally:
            await streamed.aclose()
        body = b""
        if loaded and oversize is None:
            body = bytes(raw)
        elif oversize is None:
            try:
                decoded = decode_body(bytes(raw), streamed.headers.get("content-encoding"),
                                      limit=limit)
            except ValueError as exc:
                raise httpx.DecodingError(str(exc), request=request) from None
            if decoded is None:
                oversize = f"of more than {limit} bytes decoded (limit {limit} bytes)"
            else:
                body = decoded
        kept = httpx.Headers([(k, v) for k, v in streamed.headers.multi_items()
                              if k.lower() not in ("content-encoding", "content-length",
                                                   "transfer-encoding")])
        response = httpx.Response(streamed.status_code, headers=kept, content=body,
                                  request=request, extensions=dict(streamed.extensions))
        if oversize is not None:
            response.extensions[OVERSIZE] = oversize
        return response

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


def _rate_signals(latency: float, response: httpx.Response | None) -> dict[str, Any]:
    """What the rate limiter hears of one attempt: the status (None: no answer), its
    latency, a 429's requested wait and the server's remaining budget."""
    if response is None:
        return {"status": None, "latency": latency}
    status = response.status_code
    return {
        "status": status,
        "latency": latency,
        "retry_after": server_delay(response) if status == 429 else None,
        "remaining": _header_int(response, "x-ratelimit-remaining"),
        "limit": _header_int(response, "x-ratelimit-limit"),
    }


def _header_int(response: httpx.Response, name: str) -> int | None:
    raw = response.headers.get(name)
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return None

