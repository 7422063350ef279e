"""The ``Source`` protocol: a revision and a tree of files, and its kinds.

Three kinds, one surface:

- a plain directory (``--manifests DIR``; the revision is a content hash);
- a git checkout kept by someone else (``--manifests /git/current/manifests`` with a git-sync
  sidecar: the revision is the commit its ``.worktrees/<sha>`` folder is named for, or
  ``git rev-parse HEAD`` in a checkout); both are a :class:`DirectorySource`;
- the built-in git follower (``--git-url URL``): :class:`reconciler.source.git.GitSource`.

The daemon calls :meth:`Source.load` to read the manifests, :meth:`Source.follow` (a task) to
be told when they changed, :meth:`Source.poke` on a webhook, :meth:`Source.refresh` before
its first load, and :meth:`Source.status` for metrics and ``/status``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from reconciler.errors import ConfigError
from reconciler.model.manifest import LoadResult
from reconciler.source.loader import load_manifests
from reconciler.source.revision import worktree_revision
from reconciler.source.watcher import SourceWatcher

if TYPE_CHECKING:
    from reconciler.source.git import GitSettings

__all__ = [
    "DirectorySource",
    "Snapshot",
    "Source",
    "SourceStatus",
    "check_manifests_path",
    "looks_like_git_url",
    "open_source",
]


@dataclass(frozen=True)
class Snapshot:
    """The tree a source serves now: where its files are, and the revision they are at
    (None: a plain directory, whose revision is the loader's content hash)."""

    root: Path
    revision: str | None


@dataclass(frozen=True)
class SourceStatus:
    """How a source is doing, safe to show anywhere (no credential in any field)."""

    #: ``directory``, ``git-sync`` or ``git``
    kind: str
    #: a path, or a URL without user info plus ref and path
    location: str
    revision: str | None
    #: Unix time of the last good fetch (git) or load (directory); None: none yet
    last_success: float | None
    #: failed fetches (git) or loads of a missing root (directory) since the start
    errors: int
    last_error: str | None = None


@runtime_checkable
class Source(Protocol):
    """Where manifests come from: a revision and a tree of files."""

    @property
    def kind(self) -> str:
        """``directory``, ``git-sync`` or ``git``."""
        ...

    def describe(self) -> str:
        """Where it reads from, safe for logs (no credential)."""
        ...

    def status(self) -> SourceStatus: ...

    def snapshot(self) -> Snapshot:
        """The tree served now; SourceError when there is none yet (git before its first
        good fetch)."""
        ...

    def load(self) -> LoadResult:
        """Load the manifests of the tree served now (SourceError as :meth:`snapshot`)."""
        ...

    def changed(self) -> bool:
        """Cheap: whether :meth:`load` would now read something else than last time."""
        ...

    def refresh(self) -> bool:
        """Blocking: bring the tree up to date (git: fetch); True when it moved. Never
        raises: failures are counted in :meth:`status`."""
        ...

    def poke(self) -> None:
        """A webhook arrived: look for a new tree soon (debounced). Thread-safe."""
        ...

    async def follow(self, on_change: Callable[[str], None]) -> None:
        """Run until cancelled, calling ``on_change(reason)`` whenever the tree moved."""
        ...


class DirectorySource:
    """A directory (or one file) on disk: plain, a git checkout, or a git-sync link."""

    def __init__(self, root: str | os.PathLike[str], *, watch_period: float = 2.0) -> None:
        check_manifests_path(os.fspath(root))
        self.root = Path(root)
        self.watch_period = watch_period
        self.watcher = SourceWatcher(self.root)
        self.errors = 0
        self.last_success: float | None = None
        self.last_error: str | None = None
        self._revision: str | None = None

    @property
    def kind(self) -> str:
        return "git-sync" if worktree_revision(self.root) is not None else "directory"

    def describe(self) -> str:
        return str(self.root)

    def status(self) -> SourceStatus:
        return SourceStatus(kind=self.kind, location=self.describe(), revision=self._revision,
                            last_success=self.last_success, errors=self.errors,
                            last_error=self.last_error)

    def snapshot(self) -> Snapshot:
        return Snapshot(root=self.root, revision=None)

    def load(self) -> LoadResult:
        self.watcher.mark()  # first: a change made while loading is seen next time
        result = load_manifests(self.root)
        if os.path.exists(self.root):
            self.last_success = time.time()
            self.last_error = None
        else:
            self.errors += 1
            self.last_error = f"{self.root}: no such file or directory"
        self._revision = result.revision
        return result

    def changed(self) -> bool:
        return self.watcher.changed()

    def refresh(self) -> bool:
        return self.changed()

    def poke(self) -> None:
        """Nothing to fetch: the daemon's own trigger reloads the directory."""

    async def follow(self, on_change: Callable[[str], None]) -> None:
        """Follow the files: file-system events where the kernel gives them (a new file
        is loaded within a fraction of a second), else a stat pass every
        ``watch_period``; either way confirmed by the content (hashed only when names,
        sizes or mtimes moved), so an event that changed nothing loads nothing."""
        async for _reason in self.watcher.watch(self.watch_period):
            if self.watcher.content and self.watcher.changed():
                on_change("manifests changed")


# ------------------------------------------------------------------ --manifests checks


_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_SCP_LIKE = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:")


def looks_like_git_url(value: str) -> bool:
    """Whether a ``--manifests`` value is a git URL rather than a path: ``https://``,
    ``http://``, ``ssh://``, ``git://``, ``file://``, ``git@host:path``, or a name ending in
    ``.git`` that is not a folder of manifests (a missing path, or a bare repository)."""
    if _URL_SCHEME.match(value) or _SCP_LIKE.match(value):
        return True
    if value.rstrip("/").endswith(".git"):
        path = Path(value)
        bare = (path / "HEAD").is_file() and (path / "objects").is_dir()
        return bare or not path.exists()
    return False


def check_manifests_path(value: str) -> None:
    """ConfigError with the hint "use --git-url URL" when ``--manifests`` is given a git URL
    (``reconciler run --manifests https://.../x.git`` used to say the path does not exist)."""
    if looks_like_git_url(value):
        from reconciler.source.git import safe_url

        shown = safe_url(value)
        raise ConfigError(f"--manifests takes a directory or a file, and {shown!r} looks like "
                          f"a git URL: use --git-url {shown} (with --git-ref BRANCH and "
                          "--git-path FOLDER) to follow a repository")


def open_source(
    manifests: str | os.PathLike[str] | None = None,
    *,
    git: GitSettings | None = None,
    watch_period: float = 2.0,
) -> Source:
    """The source configured: ``--manifests`` (a :class:`DirectorySource`) or ``git``
    (a :class:`reconciler.source.git.GitSettings`: a ``GitSource``); exactly one."""
    from reconciler.source.git import GitSource

    if (manifests is None) == (git is None):
        raise ConfigError("give exactly one of --manifests DIR and --git-url URL")
    if git is not None:
        return GitSource(git)
    assert manifests is not None
    return DirectorySource(manifests, watch_period=watch_period)
