"""Records to column values and back, shared by the SQLite and the PostgreSQL store.

Both backends store the same columns the same way: times as UTC epoch seconds (a float),
JSON values as sorted-key text, states as their names. So a record read back from either
is equal to the one written, and a copy from one backend to the other changes nothing.

The JSON columns (an intent's ``last_error``, an operation's ``error`` and ``result``) hold
what came from outside: :func:`to_json` scrubs them of secrets (:mod:`reconciler.model.scrub`)
and bounds them before either backend writes them: every string cut to
:data:`STRING_LIMIT` characters, and a value still longer than :data:`JSON_LIMIT` bytes
as JSON replaced by a marker with its size (``{"truncated": true, "bytes": N, ...}``).
:func:`from_json` scrubs again what it reads (a store written by an older version).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from reconciler.model import scrub
from reconciler.model.records import Epoch, IntentRecord, OperationRecord
from reconciler.model.states import IntentState, OperationStatus

__all__ = [
    "JSON_COLUMNS",
    "JSON_LIMIT",
    "STRING_LIMIT",
    "TIME_COLUMNS",
    "Row",
    "bounded",
    "columns",
    "from_json",
    "from_row",
    "operation_status",
    "to_datetime",
    "to_json",
    "to_row",
    "to_timestamp",
]


class Row(Protocol):
    """A database row readable by column name (``sqlite3.Row``, a psycopg dict row)."""

    def __getitem__(self, key: str, /) -> Any: ...


def to_timestamp(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def to_datetime(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


#: the longest string kept in a JSON column (characters)
STRING_LIMIT = 2000
#: the most a JSON column holds (bytes of JSON text); a larger value becomes a marker
JSON_LIMIT = 16 * 1024


def _cut(value: Any) -> Any:
    if isinstance(value, str):
        if len(value) <= STRING_LIMIT:
            return value
        return f"{value[:STRING_LIMIT]}...(truncated, {len(value)} characters)"
    if isinstance(value, dict):
        return {k: _cut(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v) for v in value]
    return value


def bounded(value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` scrubbed of secrets, with long strings cut, or (still longer than
    :data:`JSON_LIMIT` as JSON) a marker saying how large it was."""
    clean = _cut(scrub.value(value))
    size = len(json.dumps(clean, sort_keys=True).encode())
    if size <= JSON_LIMIT:
        return dict(clean)
    full = len(json.dumps(value, sort_keys=True, default=str).encode())
    return {"truncated": True, "bytes": full, "limit": JSON_LIMIT,
            "keys": sorted(scrub.text(str(k))[:100] for k in value)[:20],
            "detail": f"not stored: {full} bytes as JSON, more than the {JSON_LIMIT} "
                      "bytes the state store keeps"}


def to_json(value: Mapping[str, Any] | None) -> str | None:
    """A JSON column's text: ``value`` :func:`bounded` (scrubbed), sorted keys."""
    return json.dumps(bounded(value), sort_keys=True) if value is not None else None


def from_json(text: str | None) -> Any:
    """A JSON column's value, scrubbed (again: stores of older versions were not)."""
    return scrub.value(json.loads(text)) if text else None


TIME_COLUMNS = frozenset({
    "first_submitted_at", "attempt_started_at", "next_attempt_at", "next_poll_at",
    "created_at", "updated_at", "succeeded_at", "submitted_at", "finished_at",
    "accepted_at", "missing_since", "started_at", "adopted_at",
})
JSON_COLUMNS = frozenset({"last_error", "error", "result"})
Record = TypeVar("Record", IntentRecord, OperationRecord, Epoch)


def columns(cls: type[IntentRecord | OperationRecord | Epoch]) -> tuple[str, ...]:
    """The column names of a record type, in field order."""
    return tuple(f.name for f in fields(cls))


def from_row(cls: type[Record], row: Row) -> Record:
    """A record from a row: epoch columns become UTC datetimes, JSON columns objects."""
    return cls(**{name: raw if decode is None else decode(raw)
                  for name, decode in _DECODERS[cls] for raw in (row[name],)})


def _decoders(cls: type[IntentRecord | OperationRecord | Epoch],
              ) -> tuple[tuple[str, Callable[[Any], Any] | None], ...]:
    """Each column of a record type with what decodes it (None: kept as stored)."""
    status: Callable[[Any], Any] = IntentState if cls is IntentRecord else operation_status

    def decoder(name: str) -> Callable[[Any], Any] | None:
        if name in TIME_COLUMNS:
            return to_datetime
        if name in JSON_COLUMNS:
            return from_json
        return status if name == "status" else _interned

    return tuple((name, decoder(name)) for name in columns(cls))



def _interned(raw: Any) -> Any:
    """A text column as one shared string: thousands of records repeat the same service,
    command and revision, and a record's canonical intent and spec hash are its
    command's (interned there too)."""
    return sys.intern(raw) if type(raw) is str else raw


def operation_status(raw: str) -> str:
    """A known :class:`OperationStatus`, or what the server said, kept as it came."""
    try:
        return OperationStatus(raw)
    except ValueError:
        return raw


def to_row(record: IntentRecord | OperationRecord | Epoch) -> dict[str, Any]:
    """A record as column values: datetimes to epoch seconds, mappings to JSON."""
    row: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name in TIME_COLUMNS:
            row[f.name] = to_timestamp(value)
        elif f.name in JSON_COLUMNS:
            row[f.name] = to_json(value)
        elif isinstance(value, StrEnum):
            row[f.name] = str(value)
        else:
            row[f.name] = value
    return row


_DECODERS = {cls: _decoders(cls) for cls in (IntentRecord, OperationRecord, Epoch)}
