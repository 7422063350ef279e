"""What a ``--state`` value names: a PostgreSQL database or a SQLite file. No database
library is imported here: a daemon on SQLite never loads ``psycopg`` (about 10 MB)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from reconciler.errors import StoreError

__all__ = ["PASSWORD_FILE_ENV", "SCHEMES", "is_postgres_url", "sqlite_path"]

#: names the file holding the password of the ``--state postgresql://…`` URL
PASSWORD_FILE_ENV = "RECONCILER_STATE_PASSWORD_FILE"  # noqa: S105 - a variable's name
SCHEMES = ("postgresql", "postgres")


def is_postgres_url(location: str) -> bool:
    """Whether a ``--state`` value names a PostgreSQL database."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def sqlite_path(location: str) -> str | None:
    """The file a ``--state`` value names for SQLite (``sqlite:///abs/path``,
    ``sqlite://rel/path``, ``sqlite:///:memory:``, or a plain path), or None when it
    names PostgreSQL."""
    if is_postgres_url(location):
        return None
    if location.lower().startswith("sqlite:"):
        parts = urlsplit(location)
        path = unquote(parts.netloc + parts.path)
        if path in ("/:memory:", ":memory:"):
            return ":memory:"
        if not path:
            raise StoreError(f"state store {location}: no file in the sqlite: URL "
                             "(sqlite:///absolute/path or sqlite://relative/path)")
        return path
    scheme, sep, _ = location.partition("://")
    if sep and scheme.isidentifier():
        raise StoreError(f"state store {scheme}://…: unknown kind of store (a path, "
                         "sqlite:///path or postgresql://user@host:port/database)")
    return location
