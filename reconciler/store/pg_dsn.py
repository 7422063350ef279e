"""The PostgreSQL state store's connections: the ``postgresql://`` URL (:class:`PostgresDsn`),
its password (a file re-read for every new connection, or the URL's own), the URL as shown
(never with its password), the connection pool, and ``psycopg`` errors as
:class:`~reconciler.errors.StoreError`. See :mod:`reconciler.store.postgres`.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psycopg
import psycopg.conninfo
import psycopg_pool
from psycopg.rows import DictRow, dict_row

from reconciler.errors import StoreError
from reconciler.store.locations import PASSWORD_FILE_ENV, SCHEMES, is_postgres_url

__all__ = [
    "ATTEMPTS",
    "CONNECT_HINT",
    "PASSWORD_FILE_ENV",
    "SCHEMES",
    "Connection",
    "PooledConnection",
    "PostgresDsn",
    "connect",
    "display_url",
    "is_lost",
    "is_postgres_url",
    "open_pool",
]

#: how often one transaction is tried when its connection is lost (the server restarted)
ATTEMPTS = 4
CONNECT_HINT = ("check that the server is up and reachable, that the database exists, and "
                f"the user and password (URL, {PASSWORD_FILE_ENV}, PGPASSWORD)")

Connection = psycopg.Connection[DictRow]


@dataclass(frozen=True)
class PostgresDsn:
    """A parsed ``postgresql://`` URL: its connection parameters without the password, a
    display form without it, and where the password comes from."""

    #: ``postgresql://user@host:port/db``: safe to log and show
    display: str
    params: Mapping[str, str | int | None] = field(repr=False)
    url_password: str | None = field(default=None, repr=False)
    password_file: str | None = None

    @classmethod
    def parse(cls, url: str, *, password_file: str | None = None,
              environ: Mapping[str, str] = os.environ) -> PostgresDsn:
        """Parse ``url``; ``password_file`` defaults to ``$RECONCILER_STATE_PASSWORD_FILE``."""
        display = display_url(url)
        try:
            params: dict[str, str | int | None] = dict(psycopg.conninfo.conninfo_to_dict(url))
        except psycopg.Error:
            raise StoreError(f"state store {display}: not a valid PostgreSQL URL "
                             "(postgresql://user@host:port/database?param=value)") from None
        password = params.pop("password", None)
        file = password_file or environ.get(PASSWORD_FILE_ENV, "").strip() or None
        return cls(display=display, params=params,
                   url_password=str(password) if password is not None else None,
                   password_file=file)

    def password(self) -> str | None:
        """The password to connect with now (the file is read on every call)."""
        if self.password_file is not None:
            try:
                return Path(self.password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise StoreError(
                    f"state store {self.display}: cannot read the password file "
                    f"{self.password_file} ({exc.strerror or type(exc).__name__}); check "
                    f"{PASSWORD_FILE_ENV} and the mounted Secret") from None
        return self.url_password

    def connect_kwargs(self, **extra: str | int | None) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect``: the URL's parameters, the password
        read now, ``extra`` (an ``options`` value is appended to the URL's)."""
        kwargs: dict[str, Any] = {"application_name": "ailake-reconciler",
                                  "connect_timeout": 10, **self.params}
        for key, value in extra.items():
            if key == "options" and kwargs.get("options"):
                kwargs["options"] = f"{kwargs['options']} {value}"
            else:
                kwargs[key] = value
        password = self.password()
        if password is not None:
            kwargs["password"] = password
        return kwargs

    def scrub(self, text: str) -> str:
        """``text`` with every password this DSN knows replaced."""
        secrets = {self.url_password}
        if self.password_file is not None:
            with contextlib.suppress(OSError):
                secrets.add(Path(self.password_file).read_text(encoding="utf-8").strip())
        for secret in secrets:
            if secret:
                text = text.replace(secret, "***")
                quoted = urllib.parse.quote(secret, safe="")
                if quoted != secret:
                    text = text.replace(quoted, "***")
        return text

    def error(self, what: str, exc: BaseException, hint: str | None = None) -> StoreError:
        """A StoreError for ``exc``: the scrubbed URL, what failed, what to check."""
        detail = " ".join(str(exc).split()) or type(exc).__name__
        if hint is None:
            lost = isinstance(exc, psycopg.OperationalError | psycopg_pool.PoolTimeout)
            hint = CONNECT_HINT if lost else "check the server's log"
        return StoreError(self.scrub(f"state store {self.display}: {what}: {detail}; {hint}"))


def display_url(url: str) -> str:
    """``postgresql://user@host:port/db`` from any URL, never with its password."""
    try:
        parts = urllib.parse.urlsplit(url)
        user = urllib.parse.unquote(parts.username) + "@" if parts.username else ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        scheme = parts.scheme or "postgresql"
        return f"{scheme}://{user}{host}{port}{parts.path or '/'}"
    except ValueError:
        return "postgresql://(an invalid URL)"


class PooledConnection(psycopg.Connection[DictRow]):
    """A pooled connection whose password is read when it connects (files rotate)."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        dsn = kwargs.pop("reconciler_dsn", None)
        extra = kwargs.pop("reconciler_extra", {})
        if isinstance(dsn, PostgresDsn):
            kwargs.update(dsn.connect_kwargs(**extra))
        return super().connect(conninfo, **kwargs)



def connect(dsn: PostgresDsn, extra: Mapping[str, str | int | None]) -> Connection:
    """One direct connection (not pooled), rows as dicts; ``psycopg`` errors are raised."""
    return psycopg.connect(**dsn.connect_kwargs(**extra), row_factory=dict_row)


def open_pool(dsn: PostgresDsn, extra: Mapping[str, str | int | None], *, min_size: int,
              max_size: int, timeout: float) -> psycopg_pool.ConnectionPool[PooledConnection]:
    """An open pool of ``min_size`` to ``max_size`` connections, autocommit off; StoreError
    when it has no connection within ``timeout`` seconds."""
    pool: psycopg_pool.ConnectionPool[PooledConnection] = psycopg_pool.ConnectionPool(
        "", connection_class=PooledConnection, min_size=min_size, max_size=max_size,
        kwargs={"reconciler_dsn": dsn, "reconciler_extra": extra,
                "row_factory": dict_row, "autocommit": False},
        check=psycopg_pool.ConnectionPool.check_connection, open=False,
        name="reconciler-state", timeout=timeout)
    try:
        pool.open(wait=True, timeout=timeout)
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        pool.close()
        raise dsn.error("cannot open", exc) from None
    return pool


def is_lost(exc: BaseException, conn: psycopg.Connection[Any] | None) -> bool:
    """Whether the transaction can simply run again: the connection went away (broken,
    the server shutting down or starting), or the server rolled it back whole (a
    deadlock, a serialization failure)."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return False
    if conn is not None and conn.broken:
        return True
    state = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, psycopg.OperationalError) and (
        state.startswith("08") or state in ("57P01", "57P02", "57P03", "40001", "40P01")
        or not state)
