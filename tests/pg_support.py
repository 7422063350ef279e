"""A throwaway PostgreSQL server for tests: initdb + pg_ctl in a temporary directory.

Debian's ``postgresql`` package (``.ci/tools.sh`` installs it) provides the binaries under
``/usr/lib/postgresql/<major>/bin``. They refuse to run as root, so as root every command
runs as the ``postgres`` user (``runuser``) on a directory it owns. The server listens on a
free loopback port only, with fsync off, and password (SCRAM) authentication: the tests
connect as ``postgres`` with :data:`PASSWORD`. Each test gets a database of its own
(:meth:`PgServer.create_database`), so tests never see each other's rows. Without the
binaries (or with ``RECONCILER_TESTS_POSTGRES=0``) the tests that need the server are
skipped, saying why.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg

PASSWORD = "s3cret-test-pw"  # a throwaway server's
USER = "postgres"


def find_bindir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl`` (newest major version), or None."""
    env = os.environ.get("PG_BINDIR")
    if env and (Path(env) / "initdb").exists():
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def skip_reason() -> str | None:
    """Why PostgreSQL tests cannot run here (None: they can)."""
    if os.environ.get("RECONCILER_TESTS_POSTGRES", "").strip() == "0":
        return "PostgreSQL tests turned off (RECONCILER_TESTS_POSTGRES=0)"
    if find_bindir() is None:
        return ("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or "
                "on PATH; Debian's 'postgresql' package, see .ci/tools.sh)")
    if os.geteuid() == 0 and (shutil.which("runuser") is None or _no_postgres_user()):
        return "running as root, but there is no 'postgres' user or no runuser to become it"
    return None


def _no_postgres_user() -> bool:
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return True
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL server in a temporary directory (``start``/``stop``/``close``)."""

    def __init__(self, *, fsync: bool = False) -> None:
        bindir = find_bindir()
        assert bindir is not None, skip_reason()
        self.bindir = bindir
        self.fsync = fsync
        self.root = Path(tempfile.mkdtemp(prefix="reconciler-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._names = itertools.count(1)
        self.start_seconds = 0.0
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        started = time.perf_counter()
        self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
                  "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync", "--no-instructions")
        self.start()
        self.start_seconds = time.perf_counter() - started

    # ------------------------------------------------------------------ process

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        command: Sequence[str] = [str(self.bindir / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              cwd=self.root, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}"
                               f"{done.stderr}\n{log}")
        return done

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.root} -c max_connections=200")
        if not self.fsync:
            options += " -F -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ databases

    def url(self, database: str = "postgres", *, password: bool = True,
            user: str = USER) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{database}"

    @contextmanager
    def admin(self, database: str = "postgres") -> Iterator[psycopg.Connection]:
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            yield conn

    def create_database(self) -> str:
        """A new empty database; its name."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def terminate(self, *, application_name: str | None = None, pid: int | None = None,
                  database: str | None = None) -> int:
        """``pg_terminate_backend`` the matching sessions (not this one); how many."""
        clauses, params = ["pid <> pg_backend_pid()", "backend_type = 'client backend'"], []
        if application_name is not None:
            clauses.append("application_name = %s")
            params.append(application_name)
        if pid is not None:
            clauses.append("pid = %s")
            params.append(pid)
        if database is not None:
            clauses.append("datname = %s")
            params.append(database)
        with self.admin() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                + " AND ".join(clauses), params).fetchall()
        return len(rows)


class Backend:
    """One test's store location on one backend; :meth:`open` opens stores on it (closed
    at the end of the test)."""

    def __init__(self, name: str, location: str, server: PgServer | None = None,
                 database: str | None = None) -> None:
        self.name = name
        self.location = location
        self.server = server
        self.database = database
        self._opened: list = []

    def __repr__(self) -> str:
        return f"Backend({self.name})"

    def open(self, *, retention: int = 50, readonly: bool = False):
        from reconciler.store import open_store

        store = open_store(self.location, retention=retention, readonly=readonly)
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in self._opened:
            with contextlib.suppress(Exception):  # already closed by the test
                store.close()
        if self.server is not None and self.database is not None:
            self.server.drop_database(self.database)


def started_server() -> Iterator[PgServer]:
    """A PostgreSQL server of its own for a fixture to yield (the test skipped, with the
    reason, when the server binaries are absent); stopped when the fixture ends."""
    import pytest

    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PgServer()
    try:
        yield server
    finally:
        server.close()

