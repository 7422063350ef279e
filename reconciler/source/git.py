"""The built-in git follower: ``reconciler run --git-url URL [--git-ref main] [--git-path DIR]``.

It drives the git CLI (``subprocess``, never a shell), one bounded call at a time:

1. ``git fetch --depth=1 --no-tags -- URL +REF:refs/reconciler/fetched`` into a bare cache
   repository (``CACHE/repo.git``);
2. when the commit moved: ``read-tree`` + ``checkout-index`` of ``COMMIT:PATH`` into a new
   directory ``CACHE/trees/.tmp-<sha>``, renamed to ``CACHE/trees/<sha>`` when complete;
3. an atomic switch: the symlink ``CACHE/current -> trees/<sha>`` is replaced with
   ``rename(2)``, so a load sees the old tree or the new one, never a mix;
4. trees other than the current and the previous one are removed (a load still reading the
   previous tree is never pulled from under it).

A failed fetch (an unreachable remote, a bad token, a missing ref) keeps serving the last good
tree, counts an error and records a message; so does a commit that lacks ``--git-path``. A
cache that survives a restart is served at once, before the first fetch.

**Cache** (``--git-cache``): by default ``<folder of the SQLite state file>/.reconciler-git/
<hash of url, ref and path>`` (the PVC of the one-pod setup, so a restart serves the last tree
at once), else (a PostgreSQL state) ``$TMPDIR/reconciler-git-<uid>/<hash>``. Created ``0700``;
one process at a time (``flock``).

**Safety.** No prompts (``GIT_TERMINAL_PROMPT=0``, no askpass, ``credential.helper=``), no
system or global git configuration, only the URL's own protocol allowed, a timeout on every
call (the whole process group is killed past it). Credentials are never on a command line, in
the URL shown, in an error or in a log line:

- a token (``--git-token-file``, read again at every fetch, so a rotated Secret is picked up)
  goes as ``http.extraHeader: Authorization: Basic base64(USER:TOKEN)`` through
  ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_0``/``GIT_CONFIG_VALUE_0`` in the environment of the
  git process, with redirects off; ``USER`` defaults to ``x-access-token`` (GitHub; GitLab and
  Gitea accept any user name with a token; Bitbucket wants ``x-token-auth``);
- an SSH key (``--git-ssh-key-file`` with ``--git-known-hosts-file``) goes through
  ``GIT_SSH_COMMAND`` (``-i KEY -o UserKnownHostsFile=F -o StrictHostKeyChecking=yes
  -o IdentitiesOnly=yes -o BatchMode=yes``);
- a URL with a password in it is refused; git's own messages are scrubbed of the token, its
  header and any user info in URLs before they reach a :class:`SourceError`.

The settings and their validation live in :mod:`reconciler.source.git_settings`, running git
safely in :mod:`reconciler.source.git_cli`; both are re-exported here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import structlog

from reconciler.errors import SourceError
from reconciler.model.manifest import LoadResult
from reconciler.source import git_cli
from reconciler.source.git_cli import scrub
from reconciler.source.git_settings import (
    DEFAULT_TOKEN_USER,
    GitSettings,
    default_cache_dir,
    safe_url,
)
from reconciler.source.kinds import Snapshot, SourceStatus
from reconciler.source.loader import load_manifests

__all__ = [
    "DEFAULT_TOKEN_USER",
    "GitSettings",
    "GitSource",
    "default_cache_dir",
    "safe_url",
    "scrub",
]

log = structlog.get_logger("reconciler.source.git")

FETCHED_REF = "refs/reconciler/fetched"
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
#: switches between two ``git gc --prune=now`` of the cache repository
_GC_EVERY = 50


# ------------------------------------------------------------------ the follower


class GitSource:
    """A repository followed with the git CLI; serves the tree of the last good fetch."""

    kind = "git"

    def __init__(self, settings: GitSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.cache = (settings.cache_dir if settings.cache_dir is not None else
                      default_cache_dir(settings.state, settings.url, settings.ref,
                                        settings.path))
        self.repo = self.cache / "repo.git"
        self.trees = self.cache / "trees"
        self.current_link = self.cache / "current"
        #: the argv of the last git commands run (tests check no secret is in any of them)
        self.commands: collections.deque[tuple[str, ...]] = collections.deque(maxlen=64)
        self.errors = 0
        self.fetches = 0
        self.last_success: float | None = None
        self.last_error: str | None = None
        self._secrets: list[str] = []
        self._lock = threading.Lock()
        self._loaded: str | None = None
        self._switches = 0
        self._poked: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poke_pending = False

    # -------------------------------------------------------------- the Source surface

    def describe(self) -> str:
        return self.settings.location

    @property
    def revision(self) -> str | None:
        """The commit of the tree being served (None before the first good fetch)."""
        current = self._current()
        return current[1] if current is not None else None

    def status(self) -> SourceStatus:
        return SourceStatus(kind=self.kind, location=self.describe(), revision=self.revision,
                            last_success=self.last_success, errors=self.errors,
                            last_error=self.last_error)

    def secrets(self) -> tuple[str, ...]:
        """The credentials read so far (for the log scrubber): the token and its header."""
        return tuple(self._secrets)

    def snapshot(self) -> Snapshot:
        current = self._current()
        if current is None:
            why = f": {self.last_error}" if self.last_error else ""
            raise SourceError(f"git source {self.describe()} has no tree yet (no fetch "
                              f"succeeded){why}")
        tree, sha = current
        return Snapshot(root=tree, revision=sha)

    def load(self) -> LoadResult:
        snap = self.snapshot()
        self._loaded = snap.revision
        return load_manifests(snap.root, revision=snap.revision,
                              shown_as=self.settings.subpath)

    def changed(self) -> bool:
        """Whether the tree served moved since the last :meth:`load` (cheap: a readlink)."""
        return self.revision != self._loaded

    def refresh(self) -> bool:
        """Fetch now; True when the tree served moved. Never raises: a failure is counted
        (:attr:`errors`, :attr:`last_error`) and the last good tree stays."""
        try:
            return self.fetch()
        except SourceError:
            return False

    def poke(self) -> None:
        """Ask :meth:`follow` for a fetch soon (a webhook); debounced. Thread-safe."""
        if self._loop is None or self._poked is None:
            self._poke_pending = True
            return
        self._loop.call_soon_threadsafe(self._poked.set)

    async def follow(self, on_change: Callable[[str], None]) -> None:
        """Fetch every interval (+-10%) and soon after a :meth:`poke`; call ``on_change``
        with a reason when the tree served moved. Runs until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._poked = asyncio.Event()
        if self._poke_pending:
            self._poked.set()
        while True:
            wait = self.settings.interval * random.uniform(0.9, 1.1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), wait)
            if self._poked.is_set() and self.settings.debounce:
                await asyncio.sleep(self.settings.debounce)  # one fetch per burst of hooks
            self._poked.clear()
            self._poke_pending = False
            before = self.revision
            try:
                moved = await asyncio.to_thread(self.refresh)
            except Exception as exc:  # never let the follower die: log, count, go on
                self.errors += 1
                self.last_error = f"unexpected {type(exc).__name__}"
                log.exception("git_follow_failed", source=self.describe())
                continue
            if moved and self.revision != before:
                on_change(f"git {str(self.revision)[:12]}")

    # -------------------------------------------------------------- fetching

    def fetch(self) -> bool:
        """Fetch the ref and switch to its tree; True when the tree served moved.

        Raises SourceError (counted, the last good tree kept)."""
        with self._lock:
            try:
                try:
                    moved = self._fetch()
                except OSError as exc:  # the cache: full disk, permissions, a race
                    raise SourceError(f"the git cache {self.cache} cannot be written: "
                                      f"{exc.strerror or exc}") from None
            except SourceError as exc:
                self.errors += 1
                self.last_error = str(exc)
                log.warning("git_fetch_failed", source=self.describe(), error=str(exc),
                            errors=self.errors, serving=self.revision)
                raise
            self.fetches += 1
            self.last_success = self.clock()
            self.last_error = None
            return moved

    def _fetch(self) -> bool:
        self.cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._cache_lock():
            self._ensure_repo()
            env = self._env()
            self._git("fetch", "--quiet", "--depth=1", "--no-tags", "--no-recurse-submodules",
                      "--", self.settings.url, f"+{self.settings.ref}:{FETCHED_REF}",
                      env=env, what=f"fetch of {self.describe()}")
            sha = self._git("rev-parse", "--verify", "--quiet", f"{FETCHED_REF}^{{commit}}",
                            what="reading the fetched commit").strip()
            if not _SHA.fullmatch(sha):
                raise SourceError(f"git fetch of {self.describe()} gave no commit")
            current = self._current()
            if current is not None and current[1] == sha:
                return False
            tree = self._tree(sha)
            previous = current[0] if current is not None else None
            self._switch(tree)
            self._prune(keep={tree.name, *([previous.name] if previous else [])})
            self._switches += 1
            if self._switches % _GC_EVERY == 0:
                with contextlib.suppress(SourceError):
                    self._git("gc", "--quiet", "--prune=now", what="git gc of the cache")
            log.info("git_switched", source=self.describe(), revision=sha,
                     previous=current[1] if current is not None else None)
            return True

    @contextlib.contextmanager
    def _cache_lock(self) -> Iterator[None]:
        path = self.cache / "lock"
        with open(path, "a+b") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SourceError(f"the git cache {self.cache} is in use by another "
                                  "process") from None
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _ensure_repo(self) -> None:
        if (self.repo / "HEAD").is_file():
            return
        scratch = self.cache / f".init-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        self._git("init", "--quiet", "--bare", str(scratch), in_repo=False,
                  what="creating the git cache")
        shutil.rmtree(self.repo, ignore_errors=True)
        os.replace(scratch, self.repo)

    def _tree(self, sha: str) -> Path:
        """``trees/<sha>``: the commit's ``--git-path`` folder, checked out completely."""
        self.trees.mkdir(exist_ok=True, mode=0o700)
        tree = self.trees / sha
        if tree.is_dir():
            return tree
        sub = self.settings.subpath
        spec = f"{sha}:{sub}" if sub else f"{sha}^{{tree}}"
        kind = self._git("cat-file", "-t", spec, what="looking up --git-path", check=False)
        if kind.strip() != "tree":
            raise SourceError(f"--git-path {sub!r} is not a folder in commit {sha[:12]} of "
                              f"{safe_url(self.settings.url)}; still serving the last tree")
        scratch = self.trees / f".tmp-{sha}-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        index = self.trees / f".index-{sha}-{os.getpid()}"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            self._git("read-tree", spec, env=env, what="reading the tree")
            self._git("--work-tree", str(scratch), "checkout-index", "--all", "--force",
                      env=env, what="checking the tree out")
            os.replace(scratch, tree)
        finally:
            with contextlib.suppress(OSError):
                index.unlink()
            shutil.rmtree(scratch, ignore_errors=True)
        return tree

    def _switch(self, tree: Path) -> None:
        """Point ``current`` at ``tree`` in one ``rename(2)``."""
        link = self.cache / f".current-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(os.path.relpath(tree, self.cache))
        os.replace(link, self.current_link)

    def _prune(self, keep: set[str]) -> None:
        for entry in self.trees.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
                with contextlib.suppress(OSError):
                    entry.unlink()

    def _current(self) -> tuple[Path, str] | None:
        try:
            target = os.readlink(self.current_link)
        except OSError:
            return None
        tree = (self.cache / target).resolve()
        if tree.parent != self.trees.resolve() or not _SHA.fullmatch(tree.name) \
                or not tree.is_dir():
            return None
        return tree, tree.name

    # -------------------------------------------------------------- running git

    def _token_header(self) -> str | None:
        return git_cli.token_header(self.settings, self._secrets)

    def _env(self) -> dict[str, str]:
        """The credentials' environment for a call that talks to the remote."""
        return git_cli.remote_env(self.settings, self._token_header())

    def base_env(self) -> dict[str, str]:
        """The environment every git call starts from: the parent's, minus git's own
        variables, plus no prompts and no system/global configuration."""
        return git_cli.base_env()

    def argv(self, *args: str, git_dir: Path | None) -> list[str]:
        """The command line of one git call (never holds a credential)."""
        return git_cli.argv(self.settings, *args, git_dir=git_dir)

    def _git(self, *args: str, what: str, env: Mapping[str, str] | None = None,
             in_repo: bool = True, check: bool = True) -> str:
        argv = self.argv(*args, git_dir=self.repo if in_repo else None)
        self.commands.append(tuple(argv))
        full_env = {**self.base_env(), **(env or {}), **self.settings.env}
        return git_cli.run(argv, settings=self.settings, env=full_env, cwd=self.cache,
                           secrets=self._secrets, what=what, check=check)
