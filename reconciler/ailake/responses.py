"""What the AI Lake API answers, parsed: services, run acceptances, operations, problems.

Every parser here is total: a malformed field becomes a neutral value (``""``, ``0``,
``None``) or a ``None`` result the client turns into a :class:`TemporaryError`; none of
them raises. Nothing here sends a request or knows the token.

Bounds: an answer body is read up to :data:`MAX_RESPONSE_BYTES` (the client's
``max_response_bytes``) and decoded (gzip, deflate) by :func:`decode_body` up to the same
bound, so a hostile or broken server (a 100 MB body, a gzip bomb) costs at most that much
memory; a larger answer is :data:`OVERSIZE` (the client turns it into an error naming its
size, and keeps nothing of it). The texts taken from an operation (``error``, ``result``)
are scrubbed of secrets (:mod:`reconciler.model.scrub`) when parsed.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from reconciler.model import scrub

__all__ = [
    "ACCEPTED_ENCODINGS",
    "MAX_ID_LENGTH",
    "MAX_RESPONSE_BYTES",
    "MAX_SERVER_DELAY",
    "OVERSIZE",
    "Operation",
    "OperationFailure",
    "RunAccepted",
    "ServiceInfo",
    "ServicesPage",
    "decode_body",
    "json_object",
    "oversize_marker",
    "parse_operation",
    "parse_services_page",
    "problem_details",
    "run_accepted",
    "segment",
    "server_delay",
]


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
class ServicesPage:
    """One page of ``GET /services``: its items (None for a malformed one) and paging meta."""

    items: tuple[ServiceInfo | None, ...]
    total_pages: int | None
    number: int | None


#: the longest operation id taken from a server's answer
MAX_ID_LENGTH = 256
#: the longest wait a server may ask for (seconds); a longer one is cut to this
MAX_SERVER_DELAY = 3600.0
#: the largest answer body read (and, decoded, kept), unless the client is configured
#: otherwise (``ClientSettings.max_response_bytes``)
MAX_RESPONSE_BYTES = 1024 * 1024
#: what the client asks the server to compress with; anything else is undecodable
ACCEPTED_ENCODINGS = "gzip, deflate"
#: the key of ``httpx.Response.extensions`` where the client notes an answer it cut: the
#: size it had (or "more than N bytes")
OVERSIZE = "reconciler.oversize"


def oversize_marker(response: httpx.Response) -> str | None:
    """``"<answer body of N bytes not kept (limit L bytes)>"`` for an answer the client
    cut at its limit, else None."""
    note = response.extensions.get(OVERSIZE)
    return f"<answer body {note} not kept>" if isinstance(note, str) else None


def decode_body(raw: bytes, encoding: str | None, *, limit: int) -> bytes | None:
    """``raw`` decoded by its ``Content-Encoding`` (identity, gzip, deflate; a chain of
    them), or None when decoded it is longer than ``limit`` bytes (a gzip bomb is stopped
    there). ValueError for an encoding not asked for, or data that does not decode."""
    codings = [c.strip().lower() for c in (encoding or "").split(",") if c.strip()]
    data = raw
    for coding in reversed(codings):  # the last applied is listed last
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            wbits = 16 + zlib.MAX_WBITS
        elif coding == "deflate":
            wbits = zlib.MAX_WBITS if data[:1] == b"\x78" else -zlib.MAX_WBITS
        else:
            raise ValueError(f"content-encoding {coding!r} was not asked for")
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(data, limit + 1)
        except zlib.error as exc:
            raise ValueError(f"{coding} data does not decode: {exc}") from None
        if len(out) > limit or inflater.unconsumed_tail:
            return None
        data = out
    return data


def segment(value: str) -> str:
    """One URL path segment, percent-encoded (a '/' in an id stays inside the segment)."""
    return quote(value, safe="")


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The body as a JSON object, or None (not JSON, not UTF-8, or not an object)."""
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[…]]]]
        return None
    return data if isinstance(data, dict) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --------------------------------------------------------------------------- answers


def run_accepted(response: httpx.Response, operation_id: str) -> RunAccepted:
    """A 2xx to a run POST; the headers may be missing (then our own id is the one), and
    an ``operation-id`` that is no plausible id (longer than :data:`MAX_ID_LENGTH`, or
    with spaces or control characters) is ignored as if missing."""
    given = response.headers.get("operation-id")
    accepted_id = given if given and _plausible_id(given) else operation_id
    location = response.headers.get("operation-location")
    if (not location or len(location) > 4 * MAX_ID_LENGTH
            or (bool(given) and given != accepted_id)):
        location = f"/api/v1/ailake/operations/{segment(accepted_id)}"
    return RunAccepted(operation_id=accepted_id, location=location)


def _plausible_id(value: str) -> bool:
    return len(value) <= MAX_ID_LENGTH and value.isprintable() and " " not in value


def parse_services_page(body: Mapping[str, Any]) -> ServicesPage | None:
    """A ``GET /services`` page, or None when it has no ``data`` list."""
    data = body.get("data")
    if not isinstance(data, list):
        return None
    meta = body.get("meta")
    page_meta = meta.get("page") if isinstance(meta, dict) else None
    total_pages = page_meta.get("totalPages") if isinstance(page_meta, dict) else None
    number = page_meta.get("number") if isinstance(page_meta, dict) else None
    return ServicesPage(
        items=tuple(_service_info(item) for item in data),
        total_pages=total_pages if isinstance(total_pages, int) else None,
        number=number if isinstance(number, int) else None,
    )


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


def parse_operation(body: Mapping[str, Any], operation_id: str) -> Operation | None:
    """An operation body, or None when it has no ``status`` string.

    ``operation_id`` stands in for a missing ``id``; a ``failed`` operation without an
    ``error`` object gets a placeholder one.
    """
    status = body.get("status")
    if not isinstance(status, str) or not status:
        return None
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
        result=scrub.value(result) if isinstance(result, dict) else None,
        error=error,
        raw=body,
    )


def _operation_failure(raw: Mapping[str, Any]) -> OperationFailure:
    title = raw.get("title")
    detail = raw.get("detail")
    status = raw.get("status")
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    return OperationFailure(
        title=scrub.text(title) if isinstance(title, str) else "",
        status=status if isinstance(status, int) and not isinstance(status, bool) else 0,
        detail=scrub.text(detail) if isinstance(detail, str) else "",
    )


# --------------------------------------------------------------------------- failures


def problem_details(response: httpx.Response) -> tuple[str | None, str | None, str | None]:
    """title, detail, trace id from problem+json (or a 429's ``{error, message}``)."""
    data = json_object(response) or {}
    title = _str_or_none(data.get("title")) or _str_or_none(data.get("error"))
    detail = _str_or_none(data.get("detail")) or _str_or_none(data.get("message"))
    trace = _str_or_none(data.get("traceId")) or response.headers.get("x-gdc-trace-id")
    return title, detail, trace


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


def server_delay(response: httpx.Response, *, now: float | None = None) -> float | None:
    """The wait the server asked for: ``Retry-After``, else ``X-RateLimit-Reset``, at most
    :data:`MAX_SERVER_DELAY` (a hostile ``Retry-After: 1e308`` waits an hour, not forever).

    ``X-RateLimit-Reset`` is delta-seconds in the IETF draft but an epoch timestamp at
    some providers; a value above 10**9 is read as an epoch timestamp.
    """
    delay = _server_delay(response, now=time.time() if now is None else now)
    return None if delay is None else min(delay, MAX_SERVER_DELAY)


def _server_delay(response: httpx.Response, *, now: float) -> float | None:
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
