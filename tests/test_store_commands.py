"""``reconciler store check|recover|copy`` (``reconciler.cli.store_commands``): in process
through ``main()`` for the exit codes and messages, PostgreSQL <-> SQLite for ``copy``
(skipped without a PostgreSQL server, see ``tests/pg_support.py``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pg_support import PASSWORD, PgServer
from plan_support import T0, command
from store_support import Ledger

from reconciler.cli.main import main
from reconciler.cli.store_commands import in_use, shown
from reconciler.planning.planner import desired_intent
from reconciler.store import SCHEMA_VERSION, Store, open_store

A = desired_intent(command("alpha"), T0)
B = desired_intent(command("beta"), T0)


def _filled(path: Path) -> Path:
    with Store(path) as store:
        ledger = Ledger(store)
        ledger.ran(A, T0)
        ledger.submitted(B, T0)
        store.begin_epoch(reason="created", holder="test", now=T0)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- check


def test_check_says_ok_for_a_whole_store(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    state = _filled(tmp_path / "s.db")
    code, out, _ = _run(capsys, "store", "check", "--state", state)
    assert code == 0
    assert "ok (integrity_check; 2 intents, 2 operations)" in out
    code, out, _ = _run(capsys, "store", "check", "--quick", "--state", state)
    assert code == 0 and "quick_check" in out


def test_check_of_a_missing_store_fails_without_creating_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "store", "check", "--state", tmp_path / "none" / "s.db")
    assert code == 1 and "no state store at" in err
    assert not (tmp_path / "none").exists()


def test_check_reports_a_damaged_index(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    state = _filled(tmp_path / "s.db")
    with sqlite3.connect(state) as db:
        (page,) = db.execute("SELECT rootpage FROM sqlite_master "
                             "WHERE name = 'intents_by_name'").fetchone()
    with state.open("r+b") as f:
        f.seek((page - 1) * 4096)
        f.write(b"\x0d" + b"\xff" * 4095)
    code, _, err = _run(capsys, "store", "check", "--state", state)
    assert code == 1
    assert "is damaged" in err and "store recover" in err and str(state) in err


def test_check_is_read_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = _filled(tmp_path / "s.db")
    before = (state.stat().st_mtime_ns, sorted(p.name for p in tmp_path.iterdir()))
    assert _run(capsys, "store", "check", "--state", state)[0] == 0
    assert (state.stat().st_mtime_ns, sorted(p.name for p in tmp_path.iterdir())) == before


# ---------------------------------------------------------------- recover


def test_recover_moves_a_damaged_store_aside_and_leaves_an_empty_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = _filled(tmp_path / "s.db")
    with state.open("r+b") as f:
        f.write(b"garbage" * 20)
    code, out, _ = _run(capsys, "store", "recover", "--state", state)
    assert code == 0, out
    aside = list(tmp_path.glob("s.db.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"garbage")
    assert "adoption pass" in out and "nothing runs twice" in out
    with Store(state) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.intents() == {} and store.epoch() is None  # the next start begins one


def test_recover_refuses_a_whole_store_and_forces_when_told(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = _filled(tmp_path / "s.db")
    code, out, _ = _run(capsys, "store", "recover", "--state", state)
    assert code == 1 and "is whole" in out and not list(tmp_path.glob("*.damaged-*"))
    code, out, _ = _run(capsys, "store", "recover", "--force", "--state", state)
    assert code == 0 and "it was whole; --force" in out
    assert len(list(tmp_path.glob("s.db.damaged-*"))) == 1


def test_recover_refuses_while_the_store_is_open(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = _filled(tmp_path / "s.db")
    with Store(state) as store:
        store.intents()
        assert in_use(state)
        code, out, _ = _run(capsys, "store", "recover", "--force", "--state", state)
    assert code == 1 and "in use" in out
    assert not in_use(state)


def test_recover_of_nothing_or_of_postgresql_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "store", "recover", "--state", tmp_path / "none.db")
    assert code == 1 and "nothing to recover" in out
    url = f"postgresql://u:{PASSWORD}@127.0.0.1:1/db"
    code, out, _ = _run(capsys, "store", "recover", "--state", url)
    assert code == 1 and "PostgreSQL" in out and PASSWORD not in out


# ---------------------------------------------------------------- copy


def test_copy_sqlite_to_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _filled(tmp_path / "a.db")
    code, out, _ = _run(capsys, "store", "copy", "--from", source, "--to", tmp_path / "b.db")
    assert code == 0
    assert "copied 2 intents, 2 operations and 1 epochs" in out
    with Store(source, readonly=True) as a, Store(tmp_path / "b.db", readonly=True) as b:
        assert a.intents(include_retired=True) == b.intents(include_retired=True)
        assert _ops(a) == _ops(b) and a.epochs() == b.epochs()


def _ops(store: Store) -> list[object]:
    return sorted(store.operations(), key=lambda o: (o.spec_hash, o.attempt))


def test_copy_refuses_a_target_that_is_not_empty(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, target = _filled(tmp_path / "a.db"), _filled(tmp_path / "b.db")
    code, _, err = _run(capsys, "store", "copy", "--from", source, "--to", target)
    assert code == 1 and "not empty" in err and str(source) in err


def test_copy_from_a_missing_source_creates_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "store", "copy", "--from", tmp_path / "none.db",
                        "--to", tmp_path / "b.db")
    assert code == 1 and "no state store" in err
    assert not (tmp_path / "b.db").exists()


def test_copy_opens_the_source_read_only(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    source = _filled(tmp_path / "a.db")
    before = source.read_bytes()
    assert _run(capsys, "store", "copy", "--from", source, "--to", tmp_path / "b.db")[0] == 0
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.db", "b.db"]


def test_copy_errors_never_show_a_database_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _filled(tmp_path / "a.db")
    url = f"postgresql://reconciler:{PASSWORD}@127.0.0.1:1/nowhere?connect_timeout=1"
    code, out, err = _run(capsys, "store", "copy", "--from", source, "--to", url)
    assert code == 1
    assert PASSWORD not in out + err
    assert "postgresql://reconciler@127.0.0.1:1/nowhere" in err
    assert shown(url) == "postgresql://reconciler@127.0.0.1:1/nowhere"


def test_copy_between_postgresql_and_sqlite_both_ways(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_server: PgServer) -> None:
    source = _filled(tmp_path / "a.db")
    database = pg_server.create_database()
    try:
        url = pg_server.url(database)
        code, out, _ = _run(capsys, "store", "copy", "--from", source, "--to", url)
        assert code == 0 and "(SQLite) into" in out and "(PostgreSQL)" in out
        assert PASSWORD not in out
        back = tmp_path / "back.db"
        code, out, _ = _run(capsys, "store", "copy", "--from", url, "--to", back)
        assert code == 0, out
        with Store(source, readonly=True) as a, Store(back, readonly=True) as b:
            assert a.intents(include_retired=True) == b.intents(include_retired=True)
            assert _ops(a) == _ops(b) and a.epochs() == b.epochs()
        with open_store(url, readonly=True) as pg:
            assert len(pg.intents(include_retired=True)) == 2
        code, _, err = _run(capsys, "store", "copy", "--from", source, "--to", url)
        assert code == 1 and "not empty" in err and PASSWORD not in err
    finally:
        pg_server.drop_database(database)
