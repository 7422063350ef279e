"""Whether the manifest files changed since they were last loaded, and being told at once.

The same listing as the loader (:func:`reconciler.source.files.list_files`), so the watcher
never crashes where the loader would not: odd names, vanishing files, unreadable folders.
A file over the loader's size limit is never read (its size and mtime stand for it), and a
file under it is read bounded, exactly as the loader reads it. A file whose ``stat`` did not
move since it was hashed (and was not racy then: see
:data:`reconciler.source.loader.RACY_SECONDS`) is not read again.

:meth:`SourceWatcher.watch` says *when* to look: file-system events (inotify, through
``watchfiles``) as they happen, with a stat pass every ``safety`` seconds as a safety net;
where events are not available (no ``watchfiles``, a root that does not exist yet, an
inotify limit reached) it falls back to a stat pass every ``period``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import structlog

from reconciler.source.files import (
    FileEntry,
    FileStat,
    Listing,
    file_stat,
    list_files,
    read_bounded,
)
from reconciler.source.loader import MAX_FILE_BYTES, RACY_SECONDS


def _import_watchfiles() -> Any:
    try:
        return importlib.import_module("watchfiles")
    except ImportError:  # pragma: no cover - a dependency; without it the watcher polls
        return None


watchfiles: Any = _import_watchfiles()

__all__ = ["EVENT_DEBOUNCE_MS", "EVENT_STEP_MS", "SourceWatcher", "events_available"]

log = structlog.get_logger("reconciler.source.watcher")

#: events are grouped for at most this long (a checkout writes many files at once)...
EVENT_DEBOUNCE_MS = 100
#: ...and delivered once no new one came for this long
EVENT_STEP_MS = 20
_RACY_NS = int(RACY_SECONDS * 1e9)



def events_available() -> bool:
    """Whether file-system events can be had (``watchfiles`` is installed)."""
    return watchfiles is not None


class SourceWatcher:
    """Tells whether the manifest files' content changed: a cheap stat pass on every
    look, and a content hash (what decides) only when names, sizes or mtimes moved; only
    the files whose stat moved are read again."""

    def __init__(self, root: Path | str, *, limit: int = MAX_FILE_BYTES) -> None:
        self.root = Path(root)
        self.limit = limit
        self._stat = ""
        self.content = ""
        #: path -> (stat, digest), for files whose stat can be trusted
        self._digests: dict[str, tuple[FileStat, bytes]] = {}
        #: how the last :meth:`watch` learnt of changes: ``events`` or ``polling``
        self.mode = "polling"

    def _listing(self) -> tuple[str, Listing]:
        # the real root: a git-sync or ConfigMap swap of the tree is a change even when
        # the files' names and sizes are the same
        real = os.path.realpath(self.root)
        return real, list_files(self.root)

    @staticmethod
    def _stat_digest(real: str, listing: Listing) -> str:
        digest = hashlib.sha256(os.fsencode(real) + b"\0")
        for entry in listing.entries:
            digest.update(os.fsencode(entry.path) +
                          f"\0{entry.size}\0{entry.mtime_ns}\0".encode())
        for problem in listing.problems:
            digest.update(f"{problem}\0".encode("utf-8", "backslashreplace"))
        return digest.hexdigest()

    def _content_digest(self, real: str, listing: Listing) -> str:
        digest = hashlib.sha256(os.fsencode(real) + b"\0")
        known: dict[str, tuple[FileStat, bytes]] = {}
        for entry in listing.entries:
            digest.update(os.fsencode(entry.path) + b"\0" + self._file_digest(entry, known)
                          + b"\0")
        for problem in listing.problems:
            digest.update(f"{problem}\0".encode("utf-8", "backslashreplace"))
        self._digests = known
        return digest.hexdigest()

    def _file_digest(self, entry: FileEntry, known: dict[str, tuple[FileStat, bytes]]) -> bytes:
        """The file's content hash; for a file over the limit, only its size and mtime
        (it is never read: the loader refuses it without reading it either)."""
        if entry.size > self.limit:
            return f"large:{entry.size}:{entry.mtime_ns}".encode()
        stat = file_stat(entry.path)
        remembered = self._digests.get(entry.path)
        if stat is not None and remembered is not None and remembered[0] == stat:
            known[entry.path] = remembered
            return remembered[1]
        started = time.time_ns()
        try:
            data = read_bounded(entry, self.limit)
        except (OSError, ValueError) as exc:
            return f"error:{type(exc).__name__}".encode()
        if isinstance(data, int):
            return f"large:{data}:{entry.mtime_ns}".encode()
        digest = hashlib.sha256(data).digest()
        if stat is not None and started - max(stat[3], stat[4]) > _RACY_NS:
            known[entry.path] = (stat, digest)
        return digest

    def changed(self) -> bool:
        """True when the content differs from the last :meth:`mark` (or none was made)."""
        real, listing = self._listing()
        stat = self._stat_digest(real, listing)
        if stat == self._stat and self.content:
            return False
        self._stat = stat
        return self._content_digest(real, listing) != self.content

    def mark(self) -> None:
        """Remember the current content as loaded (hashed again only when names, sizes
        or mtimes moved, as :meth:`changed` decides)."""
        real, listing = self._listing()
        stat = self._stat_digest(real, listing)
        if stat == self._stat and self.content:
            return
        self._stat = stat
        self.content = self._content_digest(real, listing)

    # ------------------------------------------------------------------ when to look

    def _targets(self) -> tuple[tuple[str, ...], bool] | None:
        """What to watch: the real root (recursively), or the folder of a single file
        (not recursively); None when it does not exist."""
        real = os.path.realpath(self.root)
        if os.path.isdir(real):
            return (real,), True
        parent = os.path.dirname(real)
        if os.path.isdir(parent):
            return (parent,), False
        return None

    async def watch(self, period: float = 2.0, *, safety: float = 60.0) -> AsyncIterator[str]:
        """Yield whenever the files may have changed: ``"event"`` (a file-system event),
        ``"moved"`` (the root now resolves elsewhere: a git-sync or ConfigMap swap),
        ``"poll"`` (the safety net every ``safety`` seconds, or every ``period`` while
        events are not available). The caller confirms with :meth:`changed`."""
        while True:
            targets = self._targets() if watchfiles is not None else None
            if targets is None:
                self.mode = "polling"
                await asyncio.sleep(period)
                yield "poll"
                continue
            events = self._events(targets, period, safety)
            try:
                async for reason in events:
                    yield reason
                    if reason == "moved":
                        break
            except (OSError, RuntimeError) as exc:  # e.g. the inotify watch limit
                if self.mode != "polling":
                    log.warning("watch_events_unavailable", root=str(self.root),
                                error=str(exc), fallback=f"stat pass every {period}s")
                self.mode = "polling"
                await asyncio.sleep(period)
                yield "poll"
            finally:
                await events.aclose()

    async def _events(self, targets: tuple[tuple[str, ...], bool], period: float,
                      safety: float) -> AsyncGenerator[str, None]:
        assert watchfiles is not None
        paths, recursive = targets
        where = self._where(paths[0])
        last_look = time.monotonic()
        stream: Any = watchfiles.awatch(
            *paths, watch_filter=None, debounce=EVENT_DEBOUNCE_MS, step=EVENT_STEP_MS,
            rust_timeout=max(50, int(period * 1000)), yield_on_timeout=True,
            recursive=recursive, ignore_permission_denied=True)
        self.mode = "events"
        try:
            async for changes in stream:
                now = time.monotonic()
                if self._where(paths[0]) != where:  # swapped, or removed and made again
                    yield "moved"
                    return
                if changes:
                    last_look = now
                    yield "event"
                elif now - last_look >= safety:
                    last_look = now
                    yield "poll"
        finally:
            await stream.aclose()


    def _where(self, watched: str) -> tuple[str, int, int]:
        """The real root and the identity of the folder watched."""
        try:
            st = os.stat(watched)
        except OSError:
            return os.path.realpath(self.root), -1, -1
        return os.path.realpath(self.root), st.st_dev, st.st_ino
