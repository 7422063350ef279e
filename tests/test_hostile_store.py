"""Hostile input, the state store and the file system: damaged SQLite pages (data, index,
header), truncated files, read-only mounts, missing or unwritable directories, a full disk.
Real ``reconciler`` processes must fail with one clear error naming the file and the
recovery (never a traceback), ``store check`` must find the damage, ``store recover`` must
rebuild without re-running anything, and ``status`` must read a store on a read-only
mount without creating a file beside it.

A converged store is made once per module by a real ``reconciler run --once`` against the
emulator; each case damages a copy. Read-only mounts and a small tmpfs come from a private
mount namespace (``unshare -m``, as root) or, for a non-root user, from file modes.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from integration_support import (
    cli_env,
    executions,
    manifest,
    reconciler,
    run_once,
    running_emulator,
    write_manifests,
)
from test_hostile_support import figure, terminal

from reconciler.ailake.emulator import RunningEmulator

#: every case is bounded in time, whatever happens
pytestmark = pytest.mark.timeout(120)


NAMES = [f"job-{i:02d}" for i in range(40)]
PAGE = 4096


@pytest.fixture(autouse=True)
def _figures(pytestconfig: pytest.Config) -> None:
    terminal(pytestconfig)


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with running_emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def converged(tmp_path_factory: pytest.TempPathFactory,
              emulator: RunningEmulator) -> tuple[Path, Path]:
    """(manifests, a converged state file) made by a real ``run --once``."""
    root = tmp_path_factory.mktemp("hostile-store")
    manifests = write_manifests(root / "manifests", [manifest(n, "instant") for n in NAMES])
    state = root / "golden" / "state.db"
    done = run_once(manifests, emulator.url, state)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not Path(f"{state}-wal").exists(), "the daemon folded its WAL in on exit"
    assert len(executions(emulator.url)) == len(NAMES)
    return manifests, state


@pytest.fixture
def store(tmp_path: Path, converged: tuple[Path, Path]) -> Path:
    """A copy of the converged store, to damage."""
    target = tmp_path / "state" / "state.db"
    target.parent.mkdir()
    shutil.copy(converged[1], target)
    return target


def _root_page(path: Path, name: str) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        (page,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?",
                             (name,)).fetchone()
    return int(page)


def _smash(path: Path, page: int, data: bytes = b"\xa5" * PAGE) -> None:
    with path.open("r+b") as f:
        f.seek((page - 1) * PAGE)
        f.write(data[:PAGE])


def _damage(path: Path, how: str) -> None:
    if how == "data-page":
        _smash(path, _root_page(path, "intents"))
    elif how == "index-page":
        _smash(path, _root_page(path, "operations_by_name"))
    elif how == "header":
        _smash(path, 1, b"this is no SQLite file at all".ljust(PAGE, b"!"))
    elif how == "truncated":
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size // 2 + 100)
    else:  # pragma: no cover
        raise AssertionError(how)


def _clear(text: str, path: Path) -> None:
    """One clear error: no traceback, the file named."""
    assert "Traceback" not in text, text
    assert "sqlite3." not in text, text
    assert str(path) in text, text


DAMAGE = ["data-page", "index-page", "header", "truncated"]


# ---------------------------------------------------------------- damaged files


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_store_stops_the_daemon_with_one_clear_error(
        store: Path, converged: tuple[Path, Path], emulator: RunningEmulator,
        how: str) -> None:
    _damage(store, how)
    before = len(executions(emulator.url))
    started = time.monotonic()
    done = run_once(converged[0], emulator.url, store, timeout=60)
    took = time.monotonic() - started
    text = done.stdout + done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("reconciler: error")]
    figure(f"store.daemon-{how}", exit=done.returncode, seconds=took,
           error=(error or ["-"])[0][:150])
    assert done.returncode == 1
    _clear(text, store)
    # the daemon's own message, or its start-up check's (reconciler check), says what to do
    assert "store recover" in text or "Move it away" in text
    assert len(executions(emulator.url)) == before, "nothing was sent"


@pytest.mark.parametrize("how", ["data-page", "header", "truncated"])
@pytest.mark.parametrize("command", [("status",), ("status", "-o", "json"),
                                     ("history", "job-01", "-o", "json")])
def test_a_damaged_store_makes_the_cli_fail_clearly(store: Path, how: str,
                                                    command: tuple[str, ...]) -> None:
    _damage(store, how)
    done = reconciler(*command, "--state", store)
    figure(f"store.cli-{'-'.join(c for c in command if c[0] != '-')}-{how}", exit=done.returncode,
           error=done.stderr.strip()[:150])
    assert done.returncode == 1
    _clear(done.stdout + done.stderr, store)


@pytest.mark.parametrize("how", DAMAGE)
def test_store_check_finds_the_damage(store: Path, how: str) -> None:
    whole = reconciler("store", "check", "--state", store)
    assert whole.returncode == 0 and "ok" in whole.stdout, whole.stderr
    _damage(store, how)
    full = reconciler("store", "check", "--state", store)
    quick = reconciler("store", "check", "--quick", "--state", store)
    figure(f"store.check-{how}", full=full.returncode, quick=quick.returncode,
           message=full.stderr.strip()[:150])
    assert full.returncode == 1 and quick.returncode == 1
    _clear(full.stderr, store)


def test_store_recover_rebuilds_by_adoption_and_runs_nothing_again(
        store: Path, converged: tuple[Path, Path], emulator: RunningEmulator) -> None:
    _damage(store, "data-page")
    before = len(executions(emulator.url))
    recovered = reconciler("store", "recover", "--state", store)
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    aside = sorted(store.parent.glob("state.db.damaged-*"))
    started = time.monotonic()
    done = run_once(converged[0], emulator.url, store)
    took = time.monotonic() - started
    status = reconciler("status", "--state", store, "-o", "json")
    figure("store.recover", moved_aside=len(aside), rebuild_s=took,
           new_executions=len(executions(emulator.url)) - before)
    assert done.returncode == 0, done.stdout + done.stderr
    assert aside, "the damaged file is kept"
    assert len(executions(emulator.url)) == before, "the adoption pass re-ran nothing"
    assert status.stdout.count('"in_sync"') == len(NAMES)
    assert reconciler("store", "check", "--state", store).returncode == 0


def test_store_recover_refuses_a_store_in_use(store: Path, tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"db = sqlite3.connect({str(store)!r}, isolation_level=None)\n"
        "db.execute('SELECT COUNT(*) FROM intents').fetchone()\n"
        "print('open', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        refused = reconciler("store", "recover", "--state", store, "--force")
    finally:
        holder.kill()
        holder.wait(10)
    figure("store.recover-in-use", exit=refused.returncode, message=refused.stdout[:120])
    assert refused.returncode == 1 and "in use" in refused.stdout
    assert store.exists() and not list(store.parent.glob("*.damaged-*"))


def test_store_recover_refuses_a_whole_store_unless_forced(store: Path) -> None:
    refused = reconciler("store", "recover", "--state", store)
    assert refused.returncode == 1 and "whole" in refused.stdout
    forced = reconciler("store", "recover", "--state", store, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert list(store.parent.glob("state.db.damaged-*"))


# ---------------------------------------------------------------- read-only file systems


def _unshare_works() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True, timeout=10, check=False)
    return probe.returncode == 0


UNSHARE = _unshare_works()


def _readonly(directory: Path, command: Sequence[str | os.PathLike[str]], *,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with ``directory`` read-only: a read-only bind mount in a private
    mount namespace (root), else the directory's write bits removed (non-root)."""
    argv = [str(c) for c in command]
    if UNSHARE:
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                str(directory), *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              env=cli_env(env), check=False)
    if os.geteuid() == 0:
        pytest.skip("needs unshare (root) or a non-root user to make a read-only directory")
    modes = {p: p.stat().st_mode for p in [directory, *directory.rglob("*")]}
    try:
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              env=cli_env(env), check=False)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def _cli(*args: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
    return [sys.executable, "-m", "reconciler", *args]


def test_status_reads_a_store_on_a_read_only_mount_and_creates_nothing(store: Path) -> None:
    before = sorted(p.name for p in store.parent.iterdir())
    done = _readonly(store.parent, _cli("status", "--state", store, "-o", "json"))
    after = sorted(p.name for p in store.parent.iterdir())
    figure("fs.readonly-status", exit=done.returncode, files_before=len(before),
           files_after=len(after), namespace="unshare" if UNSHARE else "modes")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count('"in_sync"') == len(NAMES)
    assert after == before


def test_status_reads_a_live_store_copied_with_its_wal_on_a_read_only_mount(
        store: Path) -> None:
    db = sqlite3.connect(store, isolation_level=None)
    try:
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("UPDATE intents SET revision = 'in-the-wal'")
        live = store.parent.parent / "live"
        live.mkdir()
        for suffix in ("", "-wal", "-shm"):
            shutil.copy(f"{store}{suffix}", live / f"state.db{suffix}")
    finally:
        db.close()
    done = _readonly(live, _cli("status", "--state", live / "state.db", "-o", "json"))
    figure("fs.readonly-live-wal", exit=done.returncode)
    assert done.returncode == 0, done.stderr
    assert "in-the-wal" in done.stdout, "what is only in the -wal file is read too"


def test_a_wal_without_its_shm_on_a_read_only_mount_is_one_clear_error(store: Path) -> None:
    db = sqlite3.connect(store, isolation_level=None)
    try:
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("UPDATE intents SET revision = 'in-the-wal'")
        broken = store.parent.parent / "broken"
        broken.mkdir()
        for suffix in ("", "-wal"):
            shutil.copy(f"{store}{suffix}", broken / f"state.db{suffix}")
    finally:
        db.close()
    done = _readonly(broken, _cli("status", "--state", broken / "state.db"))
    figure("fs.readonly-wal-without-shm", exit=done.returncode,
           error=done.stderr.strip()[:150])
    assert done.returncode == 1
    _clear(done.stderr, broken / "state.db")


def test_a_state_path_under_a_missing_directory_on_a_read_only_mount(
        tmp_path: Path, converged: tuple[Path, Path], emulator: RunningEmulator) -> None:
    mount = tmp_path / "ro"
    mount.mkdir()
    state = mount / "missing" / "dir" / "state.db"
    done = _readonly(mount, _cli("run", "--once", "--manifests", converged[0], "--api-url",
                                 emulator.url, "--state", state, "--listen", ""))
    figure("fs.readonly-missing-dir", exit=done.returncode, error=done.stderr.strip()[:150])
    assert done.returncode == 1
    _clear(done.stdout + done.stderr, state.parent)
    assert "writable" in done.stderr


def test_a_state_directory_that_is_not_writable(
        store: Path, converged: tuple[Path, Path], emulator: RunningEmulator) -> None:
    done = _readonly(store.parent, _cli("run", "--once", "--manifests", converged[0],
                                        "--api-url", emulator.url, "--state", store,
                                        "--listen", ""))
    figure("fs.readonly-state-dir", exit=done.returncode, error=done.stderr.strip()[:150])
    assert done.returncode == 1
    _clear(done.stdout + done.stderr, store.parent)
    assert "not writable" in done.stderr


def test_a_state_path_that_is_a_directory(tmp_path: Path, converged: tuple[Path, Path],
                                          emulator: RunningEmulator) -> None:
    state = tmp_path / "is-a-dir"
    state.mkdir()
    done = run_once(converged[0], emulator.url, state)
    figure("fs.state-is-a-directory", exit=done.returncode, error=done.stderr.strip()[:150])
    assert done.returncode == 1
    _clear(done.stdout + done.stderr, state)


def test_a_full_disk_is_one_clear_error(tmp_path: Path, converged: tuple[Path, Path],
                                        emulator: RunningEmulator) -> None:
    if not UNSHARE:
        pytest.skip("needs unshare (root) for a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    state = disk / "state.db"
    script = 'mount -t tmpfs -o size=40k tmpfs "$0" && exec "$@"'
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(disk),
            *map(str, _cli("run", "--once", "--manifests", converged[0], "--api-url",
                           emulator.url, "--state", state, "--listen", "",
                           "--interval", "1s", "--log-format", "json"))]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90,
                          env=cli_env(), check=False)
    figure("fs.disk-full", exit=done.returncode, error=done.stderr.strip()[:150])
    assert done.returncode == 1
    _clear(done.stdout + done.stderr, state)
    assert "full" in done.stdout + done.stderr
