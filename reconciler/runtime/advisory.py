"""Leader election by a PostgreSQL advisory lock: HA without Kubernetes, when the state
store is a PostgreSQL database shared by the replicas.

Every replica keeps one dedicated connection (not from the store's pool) and, every
``retry_period``, tries ``pg_try_advisory_lock(key)`` on it, ``key`` a fixed 64-bit number
derived from the lock's name. The lock is session-level: the server holds it for exactly as
long as that connection lives, and frees it the moment the session ends (process killed,
connection terminated, network gone and the session reaped), so the next replica's try
takes it over. The leader re-checks its hold every ``retry_period`` (a query on that
connection that also reads ``pg_locks``); in between, the connection's socket is watched,
so a connection the server closed (``pg_terminate_backend``, a restart) means lost
leadership at once: :attr:`AdvisoryLeader.is_leader` turns False and ``on_change(False)``
is called as soon as it is seen, by the loop or by the fence (:meth:`valid_for`, asked
before every POST).

The same interface as :class:`reconciler.runtime.leader.LeaderElector`: ``is_leader``,
``valid_for()``, ``async run()``, ``async release()``, ``on_change``, ``settings.identity``.
The session also sets ``idle_session_timeout`` (``idle_timeout``, longer than the renew
deadline): a leader that stopped checking (hung, partitioned) loses the lock on the server
after that, when it has long stopped counting itself leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import select
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog

from reconciler.errors import ConfigError, StoreError
from reconciler.runtime.leadership import Leadership
from reconciler.store.postgres import PostgresDsn

__all__ = ["HELD", "AdvisoryLeader", "AdvisorySettings", "lock_key"]

log = structlog.get_logger("reconciler.runtime.advisory")

#: what :meth:`AdvisoryLeader.valid_for` answers while the lock is certainly held: the
#: lock does not expire, so a POST is never cut short for it
HELD = 86_400.0
JITTER = 1.2
ERROR_LOG_EVERY = 30.0


def lock_key(name: str) -> int:
    """The advisory lock's key: a signed 64-bit number derived from ``name``."""
    digest = hashlib.sha256(f"ailake-reconciler/leader/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class AdvisorySettings:
    """Which lock, on which database, as whom, and how fast (seconds)."""

    #: the state store's URL (``postgresql://…``; its password as the store reads it)
    url: str
    identity: str
    #: replicas using the same name (and database) elect one leader
    name: str = "ailake-reconciler"
    retry_period: float = 2.0
    #: a leader whose last successful check is older than this stops counting as leader
    renew_deadline: float = 10.0
    #: the session's ``idle_session_timeout`` (None: the server's default)
    idle_timeout: float | None = 30.0
    password_file: str | None = None

    def __post_init__(self) -> None:
        if not self.identity or not self.name:
            raise ConfigError("leader election: the identity and the lock name must not "
                              "be empty")
        if not self.renew_deadline > self.retry_period > 0:
            raise ConfigError("leader election: need renew_deadline > retry_period > 0, got "
                              f"{self.renew_deadline}, {self.retry_period}")
        if self.idle_timeout is not None and not self.idle_timeout > self.renew_deadline:
            raise ConfigError("leader election: idle_timeout must exceed renew_deadline")

    @property
    def key(self) -> int:
        return lock_key(self.name)


class AdvisoryLeader(Leadership):
    """Hold one session-level advisory lock; :attr:`is_leader` says whether this replica
    may act. ``run()`` loops until cancelled or :meth:`release`; ``on_change(leader)`` is
    called on every flip (first with True when the lock is taken)."""

    def __init__(self, settings: AdvisorySettings, *,
                 on_change: Callable[[bool], None] | None = None,
                 environ: Mapping[str, str] = os.environ) -> None:
        super().__init__(on_change)
        self.settings = settings
        self.dsn = PostgresDsn.parse(settings.url, password_file=settings.password_file,
                                     environ=environ)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._wake = asyncio.Event()
        self._checked_at = 0.0  # monotonic start of the last successful check
        self._busy = False  # a query is using the connection (its socket is not idle)
        self._suspect = False  # the idle socket had something to read: check at once
        self._released = False
        self._last_error: tuple[str, float] | None = None
        self._holder_logged = False
        self._cooldown_until = 0.0  # no new try before (after a loss: others go first)
        self._watched = -1  # the socket watched while idle (-1: none)
        self._lock = asyncio.Lock()  # one user of the connection at a time
        key = settings.key
        self._classid, self._objid = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF

    @property
    def identity(self) -> str:
        return self.settings.identity

    @property
    def is_leader(self) -> bool:
        if self._leader and self._connection_gone():
            self._set(False, "the lock's connection was closed")
        return self._leader

    def valid_for(self) -> float:
        """:data:`HELD` while the lock's connection is alive and was checked within the
        renew deadline; 0 when not leader, once the connection is lost, or while the
        socket shows something unexplained (until the next check, at once)."""
        if not self.is_leader or self._suspect:
            return 0.0
        if time.monotonic() - self._checked_at > self.settings.renew_deadline:
            return 0.0
        return HELD

    async def wait_until_leader(self) -> None:
        """Return once this replica is the leader (at once if it already is)."""
        while not self.is_leader:
            await self._became.wait()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Try to take, or check, the lock every ``retry_period`` until cancelled or
        released. Never raises for database trouble (that only costs leadership)."""
        try:
            while not self._released:
                async with self._lock:
                    if self._released:
                        break
                    if self._leader:
                        await self._check()
                    else:
                        await self._acquire()
                await self._idle(self._pause())
        finally:
            self._set(False, "stopped")
            self._unwatch()
            async with self._lock:
                await self._disconnect()

    async def release(self) -> None:
        """Unlock and close the connection (the next replica's try takes over); ``run()``
        returns. Errors are logged, never raised: closing the session frees it anyway."""
        self._released = True
        self._unwatch()
        self._wake.set()
        was_leader = self._leader
        self._set(False, "released")
        async with self._lock:
            conn = self._conn
            if conn is not None and was_leader and not self._connection_gone():
                try:
                    async with asyncio.timeout(self.settings.renew_deadline):
                        await self._query(conn, "SELECT pg_advisory_unlock(%s)",
                                          (self.settings.key,))
                    log.info("leader_lock_released", lock=self.settings.name,
                             identity=self.identity)
                except (psycopg.Error, OSError, TimeoutError) as exc:
                    log.warning("leader_lock_release_failed", lock=self.settings.name,
                                error=self._text(exc))
            await self._disconnect()

    async def _acquire(self) -> None:
        started = time.monotonic()
        if started < self._cooldown_until:
            return
        try:
            async with asyncio.timeout(self.settings.renew_deadline):
                conn = await self._connection()
                got = await self._query(conn, "SELECT pg_try_advisory_lock(%s)",
                                        (self.settings.key,))
        except (psycopg.Error, OSError, TimeoutError, StoreError) as exc:
            self._report(exc)
            await self._disconnect()
            return
        self._last_error = None
        if got:
            self._checked_at = started
            self._suspect = False
            self._holder_logged = False
            self._set(True, "acquired")
        elif not self._holder_logged:
            self._holder_logged = True
            log.info("leader_lock_held_elsewhere", lock=self.settings.name,
                     identity=self.identity, database=self.dsn.display)

    async def _check(self) -> None:
        started = time.monotonic()
        conn = self._conn
        try:
            if conn is None or self._connection_gone():
                raise psycopg.OperationalError("the lock's connection was closed")
            async with asyncio.timeout(self.settings.renew_deadline):
                held = await self._query(
                    conn, "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid = pg_backend_pid() AND granted AND classid::bigint = %s "
                    "AND objid::bigint = %s AND objsubid = 1)", (self._classid, self._objid))
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self._report(exc)
            self._set(False, f"the lock's connection failed: {self._text(exc)}")
            await self._disconnect()
            return
        self._last_error = None
        self._suspect = False
        if held:
            self._checked_at = started
        else:
            self._set(False, "the advisory lock is no longer held by this session")

    # ------------------------------------------------------------------ connection

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._connection_gone():
            return self._conn
        await self._disconnect()
        name = f"ailake-reconciler leader {self.identity}"[:63]
        conn = await psycopg.AsyncConnection.connect(
            **self.dsn.connect_kwargs(application_name=name), autocommit=True)
        try:
            if self.settings.idle_timeout is not None:
                await conn.execute(
                    "SELECT set_config('idle_session_timeout', %s, false)",
                    (f"{int(self.settings.idle_timeout * 1000)}ms",))
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn

    async def _query(self, conn: psycopg.AsyncConnection[Any], query: str,
                     params: tuple[int, ...]) -> bool:
        self._busy = True
        try:
            row = await (await conn.execute(query, params)).fetchone()
        finally:
            self._busy = False
        return bool(row[0]) if row is not None else False

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await conn.close()
            if not conn.closed:  # pragma: no cover - the close itself hung
                with contextlib.suppress(Exception):
                    conn.pgconn.finish()

    def _connection_gone(self) -> bool:
        """Whether the idle connection is certainly lost: closed, broken, or its socket
        at end of file or holding an error (on an idle session: FATAL, it is ending).
        Anything else readable marks it suspect (checked by the loop at once)."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return True
        if self._busy:
            return False
        try:
            fd = conn.fileno()
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
            if not poller.poll(0):
                return False
            with socket.socket(fileno=os.dup(fd)) as sock:
                first = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except (OSError, psycopg.Error):
            return True
        if first in (b"", b"E"):
            return True
        if first not in (b"N", b"S", b"A"):  # not plain protocol (TLS): look at once
            self._suspect = True
            self._wake.set()
        return False

    # ------------------------------------------------------------------ waiting

    def _pause(self) -> float:
        period = self.settings.retry_period
        if self._leader:
            return 0.0 if self._suspect else period
        return period * random.uniform(1.0, JITTER)

    async def _idle(self, seconds: float) -> None:
        """Sleep ``seconds``, waking early on :meth:`release` or when the idle lock
        connection becomes readable (closed by the server, most likely)."""
        self._wake.clear()
        conn = self._conn
        if self._leader and conn is not None and not conn.closed and not self._busy:
            with contextlib.suppress(Exception):
                fd = conn.fileno()
                asyncio.get_running_loop().add_reader(fd, self._readable)
                self._watched = fd
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._wake.wait()
        finally:
            self._unwatch()

    def _unwatch(self) -> None:
        """Stop watching the socket (before any query: psycopg waits on it itself)."""
        fd, self._watched = self._watched, -1
        if fd >= 0:
            asyncio.get_running_loop().remove_reader(fd)

    def _readable(self) -> None:
        if self._leader and self._connection_gone():
            self._set(False, "the lock's connection was closed")
        self._suspect = self._suspect or self._leader
        self._wake.set()

    # ------------------------------------------------------------------ state

    def _set(self, leader: bool, reason: str) -> None:
        if not self._flip(leader):
            return
        s = self.settings
        if leader:
            log.info("leader_acquired", lock=s.name, identity=s.identity,
                     database=self.dsn.display, election="advisory-lock")
        else:
            # another replica takes over at its next try, before this one tries again
            self._cooldown_until = time.monotonic() + 2 * JITTER * s.retry_period
            level = "info" if reason in ("released", "stopped") else "warning"
            getattr(log, level)("leader_lost", lock=s.name, identity=s.identity,
                                reason=reason, election="advisory-lock")
        self._tell(leader)

    def _text(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return "no answer within the renew deadline"
        return self.dsn.scrub(" ".join(str(exc).split())) or type(exc).__name__

    def _report(self, exc: BaseException) -> None:
        """Log a failed round: when the error changes, else at most every 30 s."""
        text = self._text(exc)
        now = time.monotonic()
        last = self._last_error
        if last is not None and last[0] == text and now - last[1] < ERROR_LOG_EVERY:
            return
        self._last_error = (text, now)
        log.warning("leader_lock_error", lock=self.settings.name, database=self.dsn.display,
                    error=text, error_type=type(exc).__name__, leader=self._leader)
