"""The PostgreSQL state store on a real server (tests/pg_support.py): what is particular to
it (URLs and credentials, migrations in a ``schema_version`` table, reconnecting across a
server restart, read-only sessions), choosing a backend (``open_store``), and ``store copy``
between the backends. Everything both backends share is tested on both in test_store.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_support import PASSWORD, PgServer
from plan_support import T0, command, minutes, seconds
from store_support import Ledger

from reconciler.errors import StoreError
from reconciler.model.lifecycle import Deferred, transition
from reconciler.planning.planner import desired_intent
from reconciler.store import (
    PostgresStore,
    SqliteStore,
    StateStore,
    Store,
    open_store,
    sqlite_path,
)
from reconciler.store import postgres as pg
from reconciler.store.copy import CopyReport, copy_store
from reconciler.store.postgres import SCHEMA_VERSION, PostgresDsn

A = desired_intent(command("a"), T0)
B = desired_intent(command("b"), T0)


@pytest.fixture
def database(pg_server: PgServer) -> Iterator[str]:
    name = pg_server.create_database()
    yield name
    pg_server.drop_database(name)


@pytest.fixture
def url(pg_server: PgServer, database: str) -> str:
    return pg_server.url(database)


def history(store: StateStore) -> tuple:
    """Everything a store holds, comparable across backends (operations submitted at the
    same moment come in an order of the backend's choosing: sorted here)."""
    operations = sorted(store.operations(), key=lambda o: (o.submitted_at, o.attempt,
                                                           o.spec_hash))
    return (store.intents(include_retired=True), operations, store.epochs(),
            store.latest_by_name(), store.latest_windows(), store.names())


def busy_history(store: StateStore) -> None:
    """A store with retries, successes, retired history, odd JSON and names, epochs."""
    ledger = Ledger(store)
    epoch = store.begin_epoch(reason="created", holder="pod-a/1", now=T0)
    store.adopted(epoch, now=T0 + seconds(2.5))
    ledger.failures(A, 2, T0)
    ledger.ran(A, T0 + minutes(5))
    for i, name in enumerate(["b", "B", "é-unicode", "a.b", "Z"]):
        want = desired_intent(command(name, payload={"n": i, "ü": [1.5, None, "x"]}), T0)
        ledger.submitted(want, T0 + seconds(i) + seconds(0.123456))
        ledger.accepted(want, T0 + seconds(i + 1), server_id=f"srv-{i}")
        ledger.apply(want, Deferred(T0 + seconds(30), {"title": "Unavailable", "n": [i]}),
                     T0 + seconds(2))
    old = desired_intent(command("a", payload={"v": "old"}), T0)
    ledger.ran(old, T0)
    ledger.retired(old, T0 + minutes(1), "superseded")
    store.begin_epoch(reason="leadership", holder="pod-b/7", now=T0 + minutes(9))


# ------------------------------------------------------------------ choosing a backend


def test_open_store_chooses_the_backend_by_the_location(tmp_path, url):
    with open_store(url) as store:
        assert isinstance(store, PostgresStore) and isinstance(store, StateStore)
    with open_store(url.replace("postgresql://", "postgres://", 1)) as store:
        assert isinstance(store, PostgresStore)
    for location in (str(tmp_path / "a.db"), f"sqlite:///{tmp_path}/b.db", ":memory:",
                     "sqlite:///:memory:"):
        with open_store(location) as store:
            assert type(store) is Store is SqliteStore
    assert (tmp_path / "a.db").exists() and (tmp_path / "b.db").exists()
    assert sqlite_path("sqlite://rel/state.db") == "rel/state.db"
    assert sqlite_path("postgresql://h/db") is None
    with pytest.raises(StoreError, match="unknown kind of store"):
        open_store("mysql://user:pw@h/db")
    with pytest.raises(StoreError, match="no state store at"):
        open_store(tmp_path / "absent.db", readonly=True)


# ------------------------------------------------------------------ URLs, credentials


def test_the_url_is_shown_without_its_password():
    dsn = PostgresDsn.parse("postgresql://app:p%40ss@db.example:6432/state?sslmode=require",
                            environ={})
    assert dsn.display == "postgresql://app@db.example:6432/state"
    assert "p@ss" not in repr(dsn) and dsn.password() == "p@ss"
    assert dsn.scrub("x p@ss y p%40ss") == "x *** y ***"
    assert dsn.connect_kwargs()["sslmode"] == "require"
    with pytest.raises(StoreError) as caught:
        PostgresDsn.parse("postgresql://app:hunter2@h/db?bogus_param=1", environ={})
    assert "hunter2" not in str(caught.value)
    assert "postgresql://app@h/db" in str(caught.value)


def test_a_wrong_password_is_refused_naming_the_database_never_the_password(pg_server,
                                                                             database):
    url = pg_server.url(database).replace(PASSWORD, "not-the-pw-42")
    with pytest.raises(StoreError) as caught:
        PostgresStore(url)
    message = str(caught.value)
    assert "not-the-pw-42" not in message and PASSWORD not in message
    assert f"postgresql://postgres@127.0.0.1:{pg_server.port}/{database}" in message
    assert "password authentication failed" in message
    assert "check that the server is up" in message


def test_an_unreachable_server_is_a_store_error_with_what_to_check(pg_server):
    from pg_support import free_port

    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(StoreError, match=r"cannot open.*check that the server is up") as caught:
        PostgresStore(url, timeout=2)
    assert PASSWORD not in str(caught.value)


def test_the_password_may_come_from_a_file_named_by_the_environment(pg_server, database,
                                                                    tmp_path, monkeypatch):
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    monkeypatch.setenv(pg.PASSWORD_FILE_ENV, str(secret))
    with open_store(pg_server.url(database, password=False)) as store:
        Ledger(store).submitted(A, T0)
        assert store.dsn.password_file == str(secret)
    monkeypatch.setenv(pg.PASSWORD_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(StoreError, match="cannot read the password file"):
        open_store(pg_server.url(database, password=False))


def test_a_rotated_password_file_is_read_for_every_new_connection(pg_server, database,
                                                                  tmp_path):
    with pg_server.admin() as conn:
        conn.execute("DROP ROLE IF EXISTS rotating")
        conn.execute("CREATE ROLE rotating LOGIN SUPERUSER PASSWORD 'first-pw'")
    secret = tmp_path / "password"
    secret.write_text("first-pw")
    url = pg_server.url(database, password=False, user="rotating")
    try:
        with PostgresStore(url, password_file=str(secret)) as store:
            Ledger(store).submitted(A, T0)
            with pg_server.admin() as conn:
                conn.execute("ALTER ROLE rotating PASSWORD 'second-pw'")
            secret.write_text("second-pw\n")
            pg_server.terminate(database=database)  # every pooled connection: new ones
            Ledger(store).submitted(B, T0)
            assert set(store.intents()) == {A.spec_hash, B.spec_hash}
    finally:
        pg_server.drop_database(database)  # its tables belong to the role
        with pg_server.admin() as conn:
            conn.execute("DROP ROLE IF EXISTS rotating")


# ------------------------------------------------------------------ schema, migrations


def test_a_new_database_gets_every_migration_recorded_once(pg_server, database, url):
    PostgresStore(url).close()
    PostgresStore(url).close()
    with pg_server.admin(database) as conn:
        rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    assert tables == {"intents", "operations", "epochs", "schema_version"}


def test_reopening_runs_no_migration(url, monkeypatch):
    with PostgresStore(url) as store:
        Ledger(store).submitted(A, T0)

    class NoMigrations(list):
        def __getitem__(self, index):
            raise AssertionError("a migration ran again")

    monkeypatch.setattr(pg, "_MIGRATIONS", NoMigrations())
    with PostgresStore(url) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert list(store.intents()) == [A.spec_hash]


def test_a_database_with_a_newer_schema_is_refused_naming_both_versions(pg_server, database,
                                                                        url):
    PostgresStore(url).close()
    with pg_server.admin(database) as conn:
        conn.execute("INSERT INTO schema_version VALUES (%s, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=rf"version {SCHEMA_VERSION + 1}.*\({SCHEMA_VERSION}\)"):
        PostgresStore(url)
    with pytest.raises(StoreError, match=f"version {SCHEMA_VERSION + 1}"):
        PostgresStore(url, readonly=True)


def test_a_readonly_store_never_creates_a_schema(pg_server, database, url):
    with pytest.raises(StoreError, match="schema version 0"):
        PostgresStore(url, readonly=True)
    with pg_server.admin(database) as conn:
        assert conn.execute("SELECT COUNT(*) FROM pg_tables "
                            "WHERE schemaname = 'public'").fetchone()[0] == 0


def test_a_readonly_store_runs_read_only_sessions(url):
    PostgresStore(url).close()
    with PostgresStore(url, readonly=True) as store:
        [row] = store._rows("SHOW default_transaction_read_only")
        assert row["default_transaction_read_only"] == "on"


def test_replicas_migrating_one_new_database_at_once_all_succeed(pg_server):
    for _ in range(3):
        database = pg_server.create_database()
        errors: list[BaseException] = []
        gate = threading.Barrier(4)

        def open_it(url: str = pg_server.url(database), gate=gate, errors=errors) -> None:
            gate.wait()
            try:
                PostgresStore(url).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with PostgresStore(pg_server.url(database)) as store:
            assert store.schema_version == SCHEMA_VERSION
        pg_server.drop_database(database)


V1_DATA = """
INSERT INTO intents (spec_hash, name, service, command, canonical, status, attempts,
    operation_id, created_at, updated_at, succeeded_at)
    VALUES ('h1', 'a', 'svc', 'reindex', '{}', 'succeeded', 1, 'op-1', 1, 2, 2);
INSERT INTO operations (operation_id, spec_hash, name, attempt, submitted_at, finished_at,
    status) VALUES ('op-1', 'h1', 'a', 0, 1, 2, 'succeeded');
INSERT INTO operations (operation_id, spec_hash, name, attempt, submitted_at, status)
    VALUES ('op-0-early', 'h1', 'a', 0, 0.5, 'failed');
INSERT INTO schema_version VALUES (1, 0)
"""


def test_a_version_1_database_is_migrated_keeping_its_intents_and_history(pg_server,
                                                                          database, url):
    with pg_server.admin(database) as conn:
        conn.execute(pg._VERSION_TABLE)
        for statement in (pg._MIGRATIONS[0] + ";" + V1_DATA).split(";"):
            if statement.strip():
                conn.execute(statement)
    with PostgresStore(url) as store:
        assert store.schema_version == SCHEMA_VERSION
        rec = store.intent("h1")
        assert (rec.status, rec.version, rec.accepted_at) == ("in_sync", 0, rec.updated_at)
        # one row per (intent, attempt): the latest submission of attempt 0 won
        assert [(o.operation_id, o.attempt, o.status) for o in store.operations()] == [
            ("op-1", 0, "succeeded")]
        store.check()


# ------------------------------------------------------------------ the server goes away


def test_a_restarted_server_under_a_running_store_loses_nothing(pg_server, url):
    with PostgresStore(url) as store:
        ledger = Ledger(store)
        ledger.submitted(A, T0)
        pg_server.restart()
        ledger.accepted(A, T0 + seconds(1))  # on a fresh connection
        ledger.submitted(B, T0 + seconds(2))
        assert {h: r.status for h, r in store.intents().items()} == {
            A.spec_hash: "pending", B.spec_hash: "submitting"}
        assert len(store.operations()) == 2


def test_terminated_connections_are_replaced_transparently(pg_server, database, url):
    with PostgresStore(url, max_size=4) as store:
        ledger = Ledger(store)
        ledger.submitted(A, T0)
        assert pg_server.terminate(database=database) >= 1
        ledger.accepted(A, T0 + seconds(1))
        assert store.intent(A.spec_hash).status == "pending"


def test_a_store_whose_server_is_down_raises_store_errors_then_recovers(pg_server, url):
    with PostgresStore(url, timeout=1.0) as store:
        Ledger(store).submitted(A, T0)
        pg_server.stop()
        try:
            with pytest.raises(StoreError) as caught:
                Ledger(store).submitted(B, T0)
            assert PASSWORD not in str(caught.value)
            assert "postgresql://postgres@127.0.0.1" in str(caught.value)
        finally:
            pg_server.start()
        Ledger(store).submitted(B, T0)
        assert set(store.intents()) == {A.spec_hash, B.spec_hash}


# ------------------------------------------------------------------ records, snapshot, copy


def test_both_backends_read_back_the_same_records_from_the_same_steps(tmp_path, url):
    with Store(tmp_path / "s.db") as lite, PostgresStore(url) as post:
        busy_history(lite)
        busy_history(post)
        assert history(lite) == history(post)
        # names sort byte-wise on both (COLLATE "C"): upper case, then lower, then é
        names = [r.name for r in post.intents(include_retired=True).values()]
        assert names == [r.name for r in lite.intents(include_retired=True).values()]
        assert list(dict.fromkeys(names)) == ["B", "Z", "a", "a.b", "b", "é-unicode"]
        assert lite.prune() == post.prune() == 0


def test_a_snapshot_is_an_in_memory_sqlite_copy_that_never_changes_the_database(url):
    with PostgresStore(url) as store:
        busy_history(store)
        with store.snapshot() as scratch:
            assert isinstance(scratch, Store)
            assert history(scratch) == history(store)
            Ledger(scratch).submitted(desired_intent(command("new"), T0), T0)
            assert len(scratch.intents()) == len(store.intents()) + 1
        assert "new" not in store.names()


def test_copy_from_sqlite_to_postgresql_and_back_keeps_every_record(tmp_path, url):
    with Store(tmp_path / "from.db") as source:
        busy_history(source)
        with PostgresStore(url) as target:
            report = copy_store(source, target)
            assert report == CopyReport(intents=len(source.intents(include_retired=True)),
                                        operations=len(source.operations()), epochs=2)
            assert "copied" in str(report)
            assert history(target) == history(source)
            target.check()
            with open_store(f"sqlite:///{tmp_path}/back.db") as back:
                copy_store(target, back)
                assert history(back) == history(source)
            # the copy goes on where the source stopped: the next epoch, the next version
            epoch = target.begin_epoch(reason="leadership", holder="pod-c/1", now=T0)
            assert epoch.id == 3
            pending = next(r for r in target.intents().values() if r.status == "pending")
            step = transition(pending, Deferred(T0 + minutes(1)), T0 + minutes(1))
            assert target.save(step) is True
            assert target.intent(pending.spec_hash).version == pending.version + 1


def test_copy_refuses_a_target_that_is_not_empty_and_writes_nothing(tmp_path, url):
    with Store(tmp_path / "from.db") as source, PostgresStore(url) as target:
        busy_history(source)
        Ledger(target).submitted(B, T0)
        before = history(target)
        with pytest.raises(StoreError, match="not empty"):
            copy_store(source, target)
        assert history(target) == before
        with pytest.raises(StoreError, match="not empty"):  # restore itself checks too
            target.restore(source.intents(include_retired=True).values(),
                           source.operations(), source.epochs())
        assert history(target) == before


def test_copy_writes_all_or_nothing(tmp_path, url):
    """A restore that fails half-way (here: an operation whose intent is not copied) leaves
    the target empty, so the copy can simply be run again."""
    with Store(tmp_path / "from.db") as source, PostgresStore(url) as target:
        busy_history(source)
        intents = list(source.intents(include_retired=True).values())
        with pytest.raises(StoreError):
            target.restore(intents[1:], source.operations(), source.epochs())
        assert history(target) == ({}, [], [], {}, {}, set())
        assert copy_store(source, target).intents == len(intents)


def test_an_empty_store_copies_as_empty(tmp_path, url):
    with Store(tmp_path / "empty.db") as source, PostgresStore(url) as target:
        assert copy_store(source, target) == CopyReport(0, 0, 0)
        assert target.epoch() is None
        assert target.begin_epoch(reason="created", holder="x", now=T0).id == 1


def test_a_bench_sized_store_copies_quickly(tmp_path, url):
    """Thousands of rows in one transaction (``executemany``), not one per record."""
    import time

    path = Path(tmp_path / "big.db")
    with Store(path) as source:
        ledger = Ledger(source)
        for i in range(300):
            ledger.ran(desired_intent(command(f"m{i:04d}"), T0), T0 + seconds(i))
        with PostgresStore(url) as target:
            started = time.perf_counter()
            copy_store(source, target)
            assert time.perf_counter() - started < 10
            assert history(target) == history(source)
