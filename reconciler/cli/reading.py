"""What the commands that read (``plan``, ``status``, ``history``, ``retry``) read: the
state store as it is (reading never creates one), the manifests with the continuity
verdict applied, and the clock."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from reconciler.cli.settings import manifest_source
from reconciler.model.manifest import LoadResult
from reconciler.source.continuity import Continuity, continuity, with_held
from reconciler.source.git import GitSource
from reconciler.source.loader import load_manifests
from reconciler.store import StateStore, Store, open_store, sqlite_path

__all__ = ["clock", "load_source", "no_store", "open_store_for_reading"]


def clock() -> datetime:
    """The time the commands plan and show at: ``reconciler.cli.main.utcnow``, looked up
    at every call, so that setting it there sets the clock of every command."""
    clock: Callable[[], datetime] = importlib.import_module("reconciler.cli.main").utcnow
    return clock()


@contextlib.contextmanager
def load_source(args: argparse.Namespace, store: StateStore, *,
              required: bool = True) -> Iterator[tuple[LoadResult, Continuity] | None]:
    """The manifests of ``plan``/``status`` with the continuity verdict applied (so an
    empty or broken tree never shows as orphaning everything): a directory as it is, a
    git repository fetched into a temporary cache (nothing is kept). None: no source."""
    with tempfile.TemporaryDirectory(prefix="reconciler-git-") as scratch:
        manifests, git = manifest_source(args, required=required, cache_dir=Path(scratch) / "cache")
        if manifests is not None:
            load = load_manifests(manifests)
        elif git is not None:
            source = GitSource(git)
            source.fetch()
            load = source.load()
        else:
            yield None
            return
        live = {r.name for r in store.intents().values()}
        verdict = continuity(None, load, allow_empty=args.allow_empty, recorded=live)
        yield with_held(load, verdict), verdict




def no_store(location: str) -> str | None:
    """Why there is nothing to read at a SQLite ``--state`` (None: a store is there, or
    it is PostgreSQL, whose opening says so itself)."""
    path = sqlite_path(location)
    if path is None or path == ":memory:" or Path(path).exists():
        return None
    return (f"no state store at {path} (check --state or RECONCILER_STATE; the daemon "
            "creates it on its first run)")


def open_store_for_reading(location: str) -> StateStore:
    """The store as it is (read-only), or an empty in-memory one for a SQLite file that
    does not exist: reading never creates a file."""
    path = sqlite_path(location)
    if path is not None and path != ":memory:" and not Path(path).exists():
        return Store(":memory:")
    return open_store(location, readonly=True)
