"""The one lister of manifest files, shared by the loader and the watcher.

A safe walk (``os.scandir``, no ``rglob``) that never raises on what it finds:

- dot-files and dot-folders (``.git``, ``.github``, Kubernetes' ``..data``) are skipped;
- a file or folder that vanishes mid-walk, a folder that cannot be read, a name that is not
  UTF-8, a symlink that leaves the source root, a ``*.yaml`` that is not a regular file, and
  more files than :data:`MAX_FILES` are each a :class:`~reconciler.errors.Problem` (and make
  the listing incomplete), never an exception;
- a symlink is resolved (``os.path.realpath``) and followed only while it stays inside the
  source root; one that leaves it is refused with its own name only: nothing of its target
  (path or content) is shown anywhere;
- every file is ``stat``-ed while listing, so callers check the size before any read
  (:func:`read_bounded` checks it again on the open descriptor, and reads at most the limit
  plus one byte).

**Kubernetes ConfigMap mounts and nested folders.** A ConfigMap key cannot hold ``/``, so a
tree of folders is stored one file per key, the path encoded with ``__`` as the separator:
the key ``team-a__jobs__reindex.yaml`` stands for ``team-a/jobs/reindex.yaml``. A mount is
recognised by the ``..data`` symlink the kubelet writes into it (``key -> ..data/key``,
``..data -> ..2024_01_01_00_00_00.123456789``); there, and only there (or when asked with
``path_keys=True``), top-level keys are mapped back to their paths, so problems read
``<mount>/team-a/jobs/reindex.yaml:8: ...``. The key symlinks stay inside the mount and are
accepted; the dot-folders are not listed a second time. Folder and file names must not
themselves contain ``__`` in such a tree (:func:`configmap_key` refuses them). The recipe::

    kubectl create configmap manifests --dry-run=client -o yaml \\
      $(python -m reconciler.source.configmap manifests/) | kubectl apply -f -

(:mod:`reconciler.source.configmap` prints one ``--from-file=KEY=PATH`` per manifest file.)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from reconciler.errors import Problem

__all__ = [
    "CONFIGMAP_SEPARATOR",
    "MAX_ENTRIES",
    "MAX_FILES",
    "YAML_SUFFIXES",
    "FileEntry",
    "FileStat",
    "Listing",
    "configmap_key",
    "configmap_path",
    "escaped",
    "file_stat",
    "is_configmap_mount",
    "list_files",
    "read_bounded",
    "yaml_files",
]

YAML_SUFFIXES = (".yaml", ".yml")
#: most manifest files one listing accepts; beyond, a problem and the rest is not listed
MAX_FILES = 100_000
#: most directory entries of any kind one listing looks at (a vendored tree, a mistake)
MAX_ENTRIES = 1_000_000
#: the path separator of ConfigMap keys (``team-a__jobs__reindex.yaml``)
CONFIGMAP_SEPARATOR = "__"
#: the symlink a kubelet writes into every ConfigMap/Secret volume
_K8S_DATA = "..data"
_UNNAMED = "-"


@dataclass(frozen=True)
class FileEntry:
    """One manifest file found by the walk, with what ``stat`` said when it was listed."""

    #: what to open (as the walk reached it; may hold surrogate escapes, never shown)
    path: str
    #: what problems show: the root as given plus the path below it, always printable
    display: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Listing:
    """The files of one source root and what stood in the way of listing them."""

    entries: tuple[FileEntry, ...]
    problems: tuple[Problem, ...]

    @property
    def complete(self) -> bool:
        """Every manifest file under the root was listed (nothing unreadable or refused)."""
        return not self.problems


def escaped(name: str) -> str:
    """``name`` printable on one line: bytes that are not UTF-8 as ``\\xff``, control
    characters (a newline in a file name) as ``\\n``/``\\x1b``."""
    if name.isprintable():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return name
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_yaml(name: str) -> bool:
    return name.endswith(YAML_SUFFIXES)


def is_configmap_mount(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` is a Kubernetes ConfigMap (or Secret, projected) volume."""
    return os.path.islink(os.path.join(os.fspath(root), _K8S_DATA))


def configmap_path(key: str) -> str:
    """The path a ConfigMap key stands for: ``a__b__c.yaml`` -> ``a/b/c.yaml``."""
    return "/".join(part for part in key.split(CONFIGMAP_SEPARATOR))


def configmap_key(path: str | PurePath) -> str:
    """The ConfigMap key of a relative path: ``a/b/c.yaml`` -> ``a__b__c.yaml``.

    Raises ValueError for a path that could not be mapped back (a part holding ``__``,
    empty, or starting with a dot) or whose key is not a valid ConfigMap key."""
    parts = PurePath(path).parts
    for part in parts:
        if not part or part.startswith(".") or CONFIGMAP_SEPARATOR in part or part == "..":
            raise ValueError(f"{escaped(str(path))}: a path part is empty, starts with a "
                             f"dot or holds {CONFIGMAP_SEPARATOR!r}; it cannot be a key")
    key = CONFIGMAP_SEPARATOR.join(parts)
    if len(key) > 253 or not all(c.isascii() and (c.isalnum() or c in "-._") for c in key):
        raise ValueError(f"{escaped(str(path))}: the key {escaped(key)!r} is not a valid "
                         "ConfigMap key (at most 253 of [-._a-zA-Z0-9])")
    return key


class _Walk:
    """One walk of one root: entries, problems, and the bounds."""

    def __init__(self, root: str, display_root: str, *, max_files: int, max_entries: int,
                 path_keys: bool) -> None:
        self.root = root
        self.display_root = display_root
        self.real_root = os.path.realpath(root)
        self.max_files = max_files
        self.max_entries = max_entries
        self.path_keys = path_keys
        self.found: list[tuple[tuple[str, ...], FileEntry]] = []
        self.problems: list[Problem] = []
        self.seen_entries = 0
        self.visited: set[tuple[int, int]] = set()
        self.stopped = False

    def display(self, parts: Sequence[str]) -> str:
        if not parts:
            return escaped(self.display_root or ".")
        if self.display_root in ("", "."):  # as pathlib shows them: ``a.yaml``, not ``./a.yaml``
            return escaped(os.path.join(*parts))
        return escaped(os.path.join(self.display_root, *parts))

    def problem(self, parts: Sequence[str], message: str) -> None:
        self.problems.append(Problem(self.display(parts), 1, _UNNAMED, message))

    def inside(self, real: str) -> bool:
        return real == self.real_root or real.startswith(self.real_root.rstrip(os.sep) + os.sep)

    def run(self) -> None:
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            self.problem((), "no such file or directory")
            return
        except OSError as exc:
            self.problem((), f"cannot read: {exc.strerror or exc}")
            return
        self.visited.add((st.st_dev, st.st_ino))
        # The resolved root, not the link to it: a git-sync (or ConfigMap) swap during the
        # walk cannot mix two trees, and every file is read from the tree it was listed in.
        stack: list[tuple[str, tuple[str, ...]]] = [(self.real_root, ())]
        while stack and not self.stopped:
            directory, parts = stack.pop()
            subdirs = self.scan(directory, parts)
            stack.extend(reversed(subdirs))

    def scan(self, directory: str, parts: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
        """List one directory; return its sub-directories to walk, in name order."""
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            self.problem(parts, "folder vanished while it was listed (the source is "
                         "changing); not loaded")
            return []
        except NotADirectoryError:
            self.problem(parts, "folder was replaced while it was listed (the source is "
                         "changing); not loaded")
            return []
        except PermissionError:
            self.problem(parts, "cannot read the folder: permission denied; its files are "
                         "not loaded")
            return []
        except OSError as exc:
            self.problem(parts, f"cannot read the folder: {exc.strerror or exc}")
            return []
        subdirs: list[tuple[str, tuple[str, ...]]] = []
        top = not parts
        for entry in entries:
            if self.stopped:
                break
            name = entry.name
            if name.startswith("."):
                continue
            self.seen_entries += 1
            if self.seen_entries > self.max_entries:
                self.problem(parts, f"more than {self.max_entries} entries under the source "
                             "root; the rest is not listed")
                self.stopped = True
                break
            shown = (*parts, *configmap_path(name).split("/")) \
                if top and self.path_keys and _is_yaml(name) else (*parts, name)
            subdir = self.visit(entry, shown)
            if subdir is not None:
                subdirs.append((subdir, (*parts, name)))
        return subdirs

    def visit(self, entry: os.DirEntry[str], shown: tuple[str, ...]) -> str | None:
        """Record one entry: a file (listed or refused), or a folder to walk (returned)."""
        name = entry.name
        yaml_name = _is_yaml(name)
        was_dir = False
        try:
            link = entry.is_symlink()
            was_dir = not link and entry.is_dir(follow_symlinks=False)
            if not link and not yaml_name and not was_dir:
                return None  # a README, a values.json: not ours, not even stat-ed
            if link:
                real = os.path.realpath(entry.path)
                if not self.inside(real):
                    if yaml_name or os.path.isdir(entry.path):
                        self.problem(shown, "symlink leaves the source root; not read "
                                     "(only links to files inside the source are followed)")
                    return None
            st = entry.stat(follow_symlinks=True)
        except FileNotFoundError:
            if was_dir:
                self.problem(shown, "folder vanished while it was listed (the source is "
                             "changing); not loaded")
            elif yaml_name:
                what = "broken symlink (its target does not exist)" if _safe_islink(entry) \
                    else "vanished while it was listed (the source is changing)"
                self.problem(shown, f"{what}; not loaded")
            return None
        except OSError as exc:
            if yaml_name or was_dir:
                self.problem(shown, f"cannot read: {exc.strerror or exc}")
            return None
        if stat.S_ISDIR(st.st_mode):
            if not _is_utf8(name):
                self.problem(shown, "folder name is not valid UTF-8; not searched (rename it)")
                return None
            key = (st.st_dev, st.st_ino)
            if key in self.visited:  # a symlink to a folder already walked (or a loop)
                return None
            self.visited.add(key)
            return entry.path
        if not yaml_name:
            return None
        if not _is_utf8(name):
            self.problem(shown, "file name is not valid UTF-8; not read (rename it)")
            return None
        if not stat.S_ISREG(st.st_mode):
            self.problem(shown, "not a regular file; not read")
            return None
        if len(self.found) >= self.max_files:
            self.problem(shown, f"more than {self.max_files} manifest files under the source "
                         "root; the rest is not read")
            self.stopped = True
            return None
        self.found.append((shown, FileEntry(entry.path, self.display(shown), st.st_size,
                                            st.st_mtime_ns)))
        return None


def _safe_islink(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return False


def list_files(
    root: str | os.PathLike[str],
    *,
    max_files: int = MAX_FILES,
    max_entries: int = MAX_ENTRIES,
    path_keys: bool | None = None,
    display_root: str | None = None,
) -> Listing:
    """Every ``*.yaml``/``*.yml`` under ``root`` (recursively, in path order, dot-folders
    skipped), or ``root`` itself when it is a file (whatever its name).

    ``path_keys``: map top-level ConfigMap keys back to paths (``a__b.yaml`` ->
    ``a/b.yaml``); None (the default) decides by :func:`is_configmap_mount`.
    ``display_root``: what problems show instead of ``root`` (a git source shows paths as
    they are in the repository: ``manifests/a.yaml``); ``""`` shows paths below the root.
    """
    root_text = os.fspath(root)
    if display_root is None:
        display_root = str(PurePath(root_text))
    try:
        st = os.stat(root_text)
    except OSError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        shown = escaped(display_root or os.path.basename(root_text))
        if not stat.S_ISREG(st.st_mode):
            return Listing((), (Problem(shown, 1, _UNNAMED, "not a regular file; not read"),))
        return Listing((FileEntry(root_text, shown, st.st_size, st.st_mtime_ns),), ())
    keys = is_configmap_mount(root_text) if path_keys is None else path_keys
    walk = _Walk(root_text, display_root, max_files=max_files, max_entries=max_entries,
                 path_keys=keys)
    walk.run()
    walk.found.sort(key=lambda item: item[0])
    return Listing(tuple(entry for _, entry in walk.found), tuple(walk.problems))


def read_bounded(entry: FileEntry, limit: int) -> bytes | int:
    """The bytes of ``entry``, or its size (an int) when it is over ``limit``: checked on
    the open descriptor (``fstat``), never more than ``limit + 1`` bytes read. Raises
    OSError (and ValueError for something that is not a regular file any more)."""
    fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > limit:
            return st.st_size
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        return max(st.st_size, len(data)) if len(data) > limit else data
    finally:
        os.close(fd)


def yaml_files(path: Path) -> list[Path]:
    """The manifest files under ``path`` (the listing's files only, no problems)."""
    return [Path(e.path) for e in list_files(path).entries]


#: (device, inode, size, mtime ns, ctime ns): what says a file may have changed
FileStat = tuple[int, int, int, int, int]


def file_stat(path: str) -> FileStat | None:
    """The :data:`FileStat` of ``path`` (None: it is gone or unreadable)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

