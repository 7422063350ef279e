"""Persistence of intent records: it stores what it is given and decides nothing.

Two backends behind one protocol (:class:`StateStore`): SQLite, embedded, the default
(:class:`Store`, kept under that name so every ``Store(path)`` goes on working), and
PostgreSQL, shared by replicas (:class:`PostgresStore`). :func:`open_store` picks one from
a ``--state`` value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import StoreError
from reconciler.store.locations import PASSWORD_FILE_ENV, is_postgres_url, sqlite_path
from reconciler.store.protocol import Store as StateStore
from reconciler.store.sqlite import SCHEMA_VERSION, Store
from reconciler.store.sqlite_schema import recovery_hint

__all__ = [
    "PASSWORD_FILE_ENV",
    "SCHEMA_VERSION",
    "PostgresStore",
    "SqliteStore",
    "StateStore",
    "Store",
    "is_postgres_url",
    "open_store",
    "recovery_hint",
    "sqlite_path",
]

if TYPE_CHECKING:
    from reconciler.store.postgres import PostgresStore

#: the SQLite backend by its own name (``Store`` is the same class)
SqliteStore = Store


def __getattr__(name: str) -> Any:
    """``PostgresStore``, imported (with ``psycopg``) only when asked for."""
    if name == "PostgresStore":
        from reconciler.store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(location: str | os.PathLike[str], *, retention: int = 50,
               readonly: bool = False) -> StateStore:
    """The state store at ``location``.

    - ``postgresql://…`` or ``postgres://…``: :class:`PostgresStore` (the password from
      ``$RECONCILER_STATE_PASSWORD_FILE``, else the URL, else libpq's ``PGPASSWORD`` or
      ``~/.pgpass``; never shown in a message);
    - ``sqlite:///absolute/path``, ``sqlite://relative/path`` or a plain path (``:memory:``
      too): the SQLite :class:`Store`.

    ``readonly``: read an existing store without changing it (StoreError when there is
    none, or its schema is not this reconciler's).
    """
    text = os.fspath(location)
    path = sqlite_path(text)
    if path is None:
        from reconciler.store.postgres import PostgresStore

        return PostgresStore(text, retention=retention, readonly=readonly)
    if readonly and path != ":memory:" and not Path(path).exists():
        raise StoreError(f"no state store at {path}")
    return Store(path, retention=retention, readonly=readonly)
