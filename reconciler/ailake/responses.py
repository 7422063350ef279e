"""What the AI Lake API answers, parsed: services, run acceptances, operations, problems.

Every parser here is total: a malformed field becomes a neutral value (``""``, ``0``,
``None``) or a ``None`` result the client turns into a :class:`TemporaryError`; none of
them raises. Nothing here sends a request or knows the token.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

__all__ = [
    "Operation",
    "OperationFailure",
    "RunAccepted",
    "ServiceInfo",
    "ServicesPage",
    "json_object",
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


def segment(value: str) -> str:
    """One URL path segment, percent-encoded (a '/' in an id stays inside the segment)."""
    return quote(value, safe="")


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The body as a JSON object, or None (not JSON, not UTF-8, or not an object)."""
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --------------------------------------------------------------------------- answers


def run_accepted(response: httpx.Response, operation_id: str) -> RunAccepted:
    """A 2xx to a run POST; the headers may be missing (then our own id is the one)."""
    accepted_id = response.headers.get("operation-id") or operation_id
    location = response.headers.get("operation-location") or (
        f"/api/v1/ailake/operations/{segment(accepted_id)}"
    )
    return RunAccepted(operation_id=accepted_id, location=location)


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
        result=result if isinstance(result, dict) else None,
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
        title=title if isinstance(title, str) else "",
        status=status if isinstance(status, int) and not isinstance(status, bool) else 0,
        detail=detail if isinstance(detail, str) else "",
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
