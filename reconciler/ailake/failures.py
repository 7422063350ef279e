"""Failed requests turned into classified exceptions that never carry the API token.

The kind of every failure comes from :func:`reconciler.errors.classify_status` (an HTTP
answer) or :func:`reconciler.errors.classify_transport` (no answer, after
:func:`transport_failure` has said which kind of no-answer an ``httpx`` error is); this
module only picks the exception class for that kind and writes the message. Every text
taken in (the server's problem details and body, ``httpx``'s messages) goes through the one
scrubber (:func:`reconciler.model.scrub.text`, with the token) first.
"""

from __future__ import annotations

from typing import Any

import httpx

from reconciler.ailake.responses import oversize_marker, problem_details, server_delay
from reconciler.errors import (
    IDEMPOTENT_METHODS,
    ApiError,
    CredentialsError,
    OutcomeKind,
    OutcomeUnknownError,
    PermanentError,
    TemporaryError,
    TransportFailure,
    classify_status,
    classify_transport,
)
from reconciler.model import scrub as scrubber

__all__ = ["BODY_LIMIT", "TEXT_LIMIT", "Failures", "transport_failure"]

#: How much of an error response body is kept in ``ApiError.body``.
BODY_LIMIT = 2000
#: How much of the server's problem title, detail or trace id is kept (each).
TEXT_LIMIT = 1000

_ERROR_CLASS: dict[OutcomeKind, type[ApiError]] = {
    OutcomeKind.TERMINAL: PermanentError,
    OutcomeKind.CREDENTIALS: CredentialsError,
    OutcomeKind.TRANSIENT: TemporaryError,
}

_HINTS: dict[int, str] = {
    400: "the request was rejected as malformed (payload too large, bad JSON or a "
    "non-string context value?)",
    401: "the API token is missing, invalid or expired (set RECONCILER_API_TOKEN or --token-file)",
    403: "forbidden: the organization probably lacks the AiLake entitlement, or the API "
    "token lacks the MANAGE permission",
    404: "not found (unknown service, command or operation?)",
}

# No connection was ever established (or none was free in the pool): nothing was sent.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_INVALID_REQUEST = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)
_NO_ANSWER = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
    httpx.DecodingError,
)


def transport_failure(exc: Exception) -> TransportFailure:
    """Which kind of no-answer an ``httpx`` transport (or decoding) error is."""
    if isinstance(exc, _NOT_SENT):
        return TransportFailure.NOT_SENT
    if isinstance(exc, _INVALID_REQUEST):
        return TransportFailure.INVALID_REQUEST
    if isinstance(exc, _NO_ANSWER):
        return TransportFailure.NO_ANSWER
    return TransportFailure.UNRECOGNISED


class Failures:
    """Builds the client's exceptions; scrubs ``token`` from every text taken in."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    def scrub(self, text: str) -> str:
        """``text`` through the one scrubber, the token included."""
        return scrubber.text(text, (self._token,))

    def refused(
        self, method: str, path: str, response: httpx.Response, *, operation_id: str = ""
    ) -> ApiError:
        """A non-2xx answer, of the class :func:`classify_status` gives it."""
        code = response.status_code
        kind = classify_status(code, method=method)
        if kind in (OutcomeKind.TERMINAL, OutcomeKind.CREDENTIALS):
            why = _HINTS.get(code, "the request was refused")
            if code == 401 and not self._token:
                why = "no API token configured (set RECONCILER_API_TOKEN or --token-file)"
        elif kind is OutcomeKind.UNKNOWN:
            # The spec promises nothing about whether a 5xx (or a 408 from some proxy)
            # came before or after the run started; a 409 means an operation with this
            # id exists already (maybe ours, maybe with another body).
            why = (
                "an operation with this id already exists"
                if code == 409
                else "the server failed; the command may have started"
            )
        else:
            # Transient: the only such answer to a POST is a 429.
            why = "rate limited" if method not in IDEMPOTENT_METHODS else f"HTTP {code}"
        return self._http_error(kind, method, path, response, why, operation_id)

    def bad_answer(self, method: str, path: str, response: httpx.Response, why: str) -> ApiError:
        """A 2xx that is not the JSON we expect (a proxy's HTML page): transient."""
        why = f"{why} (content-type {response.headers.get('content-type', 'none')!r})"
        return self._http_error(OutcomeKind.TRANSIENT, method, path, response, why, "")

    def too_large(self, method: str, path: str, response: httpx.Response) -> ApiError:
        """A 2xx whose body is longer than the client reads: transient (a proxy's page, a
        glitch), and nothing of it is kept beyond its size."""
        why = (f"answer too large: body {response.extensions.get('reconciler.oversize')}; "
               "nothing of it was kept (raise ClientSettings.max_response_bytes if the "
               "server's answers really are this large)")
        return self._http_error(OutcomeKind.TRANSIENT, method, path, response, why, "")

    def no_answer(
        self, method: str, path: str, exc: Exception, *, attempts: int, operation_id: str = ""
    ) -> ApiError:
        """A request without an HTTP answer, of the class :func:`classify_transport` gives."""
        failure = transport_failure(exc)
        kind = classify_transport(failure, method=method)
        if kind is OutcomeKind.TERMINAL:
            why = "request could not be built"
        elif kind is OutcomeKind.UNKNOWN:
            why = "no answer to the run request; the command may have started"
        elif method in IDEMPOTENT_METHODS:
            why = f"gave up after {attempts} attempts"
        else:
            why = "connection failed before sending"
        message = self.scrub(f"{method} {path}: {why}: {type(exc).__name__}: {exc}")
        return _error(kind, message, operation_id, method=method, endpoint=path, transport=failure)

    def _http_error(
        self,
        kind: OutcomeKind,
        method: str,
        path: str,
        response: httpx.Response,
        why: str,
        operation_id: str,
    ) -> ApiError:
        title, detail, trace = (
            self.scrub(_clip(text)) if text else None for text in problem_details(response)
        )
        code = response.status_code
        parts = [f"{method} {path} -> {code}: {why}"]
        if title or detail:
            parts.append(" - ".join(p for p in (title, detail) if p))
        if trace:
            parts.append(f"traceId={trace}")
        marker = oversize_marker(response)
        if marker is not None and "answer too large" not in why:
            parts.append(marker)
        return _error(
            kind,
            self.scrub("; ".join(parts)),
            operation_id,
            method=method,
            endpoint=path,
            status=code,
            title=title,
            detail=detail,
            trace_id=trace,
            body=self._body_text(response),
            # Only a transient error is retried, so only its wait is passed on.
            delay=server_delay(response) if kind is OutcomeKind.TRANSIENT else None,
        )

    def _body_text(self, response: httpx.Response) -> str:
        marker = oversize_marker(response)
        if marker is not None:
            return marker
        text = response.content[: BODY_LIMIT * 4].decode("utf-8", errors="replace")
        if len(text) > BODY_LIMIT:
            text = text[:BODY_LIMIT] + "...(truncated)"
        return self.scrub(text)


def _clip(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (marked)."""
    return text if len(text) <= limit else text[:limit] + "...(truncated)"


def _error(
    kind: OutcomeKind,
    message: str,
    operation_id: str,
    **fields: Any,
) -> ApiError:
    if kind is OutcomeKind.UNKNOWN:
        return OutcomeUnknownError(message, operation_id=operation_id, **fields)
    return _ERROR_CLASS[kind](message, **fields)

