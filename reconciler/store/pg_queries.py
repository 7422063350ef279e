"""The PostgreSQL state store's statements: ``INSERT`` and ``UPDATE`` texts built once from
the records' fields, and the update of an operation row by an :class:`OperationChange`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from reconciler.model.lifecycle import OperationChange
from reconciler.model.records import Epoch, IntentRecord, OperationRecord
from reconciler.store.pg_dsn import Connection
from reconciler.store.rows import columns, to_json, to_timestamp

__all__ = [
    "INSERT_INTENT",
    "RESTORE_EPOCH",
    "RESTORE_INTENT",
    "RESTORE_OPERATION",
    "UPDATE_INTENT",
    "UPSERT_OPERATION",
    "update_operation",
]

INTENT_COLUMNS = columns(IntentRecord)
OPERATION_COLUMNS = columns(OperationRecord)
EPOCH_COLUMNS = columns(Epoch)


def _quoted(name: str) -> str:
    """A fixed identifier (a record field's name), double-quoted: ``window`` is reserved."""
    assert name.isidentifier(), name
    return f'"{name}"'


def _insert(table: str, names: Sequence[str], *, conflict: Sequence[str] = (),
            update: bool = False) -> str:
    """``INSERT INTO table (names) VALUES (%(name)s…)``, optionally ``ON CONFLICT``:
    do nothing, or (``update``) overwrite every column but the key. Built once, from
    fixed names: composing ``psycopg.sql`` objects on every save costs a third of it."""
    query = (f"INSERT INTO {table} ({', '.join(map(_quoted, names))}) "  # noqa: S608
             f"VALUES ({', '.join(f'%({n})s' for n in names)})")
    if conflict:
        key = ", ".join(map(_quoted, conflict))
        if update:
            sets = ", ".join(f"{_quoted(c)} = EXCLUDED.{_quoted(c)}"
                             for c in names if c not in conflict)
            query += f" ON CONFLICT ({key}) DO UPDATE SET {sets}"
        else:
            query += f" ON CONFLICT ({key}) DO NOTHING"
    return query


def _update(table: str, names: Sequence[str], key: Sequence[str]) -> str:
    sets = ", ".join(f"{_quoted(c)} = %({c})s" for c in names if c not in key)
    where = " AND ".join(f"{_quoted(c)} = %({c})s" for c in key)
    return f"UPDATE {table} SET {sets} WHERE {where}"  # noqa: S608 - fixed names


INSERT_INTENT = _insert("intents", INTENT_COLUMNS, conflict=("spec_hash",))
RESTORE_INTENT = _insert("intents", INTENT_COLUMNS)
UPDATE_INTENT = _update("intents", INTENT_COLUMNS, ("spec_hash",))
UPSERT_OPERATION = _insert("operations", OPERATION_COLUMNS, conflict=("spec_hash", "attempt"),
                           update=True)
RESTORE_OPERATION = _insert("operations", OPERATION_COLUMNS)
RESTORE_EPOCH = _insert("epochs", EPOCH_COLUMNS)


@functools.cache
def _operation_update(names: tuple[str, ...]) -> str:
    return _update("operations", (*names, "spec_hash", "attempt"), ("spec_hash", "attempt"))


def update_operation(conn: Connection, change: OperationChange) -> None:
    values: dict[str, Any] = {"status": str(change.status)}
    if change.operation_id is not None:
        values["operation_id"] = change.operation_id
    if change.finished_at is not None:
        values["finished_at"] = to_timestamp(change.finished_at)
    if change.error is not None:
        values["error"] = to_json(change.error)
    if change.result is not None:
        values["result"] = to_json(change.result)
    conn.execute(_operation_update(tuple(values)),
                 {**values, "spec_hash": change.spec_hash, "attempt": change.attempt})
