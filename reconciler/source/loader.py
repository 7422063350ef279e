"""Loading: files to validated ``ServiceCommand`` objects and every problem found.

An invalid document is reported (``FILE:LINE: NAME: message``) and skipped; it never hides the
problems of the others or blocks the valid ones.

Nothing is done twice:

- **Per file.** Each file is validated on its own (YAML, schema, semantic rules) and the
  outcome is kept with the file's content digest (sha256 of its bytes). A later load reuses
  the outcome of a file whose digest is unchanged; a file whose ``stat`` (device, inode,
  size, mtime, ctime) is unchanged since a read that was not *racy* (its mtime at least
  :data:`RACY_SECONDS` older than the read) is not even read again, as git trusts its index.
- **Per tree.** When no file, listing problem or revision moved, :func:`load_manifests`
  returns the previous :class:`LoadResult` object itself: no cross-checks, nothing built.
- **Fast path.** A file is read by libyaml straight into values (no line bookkeeping) and
  checked by a strict pre-check of the schema (:func:`_surely_valid`: it accepts only what the
  JSON Schema accepts); line numbers are computed, by composing the file again, only when a
  problem must be reported. Anything unusual (anchors and aliases, tags, merge keys,
  duplicate or non-text keys, a document the pre-check does not accept, a syntax error, a
  large file) takes the full path (:func:`reconciler.source.composer.compose` and
  :func:`reconciler.source.schema.schema_problems`), exactly as before.
- ``gc.freeze()`` after a load that built many documents: the collector stops scanning the
  long-lived manifests on every collection.
"""

from __future__ import annotations

import gc
import hashlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from reconciler.collector import collections_paused
from reconciler.errors import Problem
from reconciler.model.manifest import LoadResult, ServiceCommand
from reconciler.source.composer import UNNAMED, Located, compose, show
from reconciler.source.fast_path import Reread
from reconciler.source.fast_path import _parse_fast as _parse_fast
from reconciler.source.fast_path import _surely_valid as _surely_valid
from reconciler.source.files import MAX_FILES, FileEntry, file_stat, list_files, read_bounded
from reconciler.source.load_cache import _FileMemo as _FileMemo
from reconciler.source.load_cache import _memo as _memo
from reconciler.source.load_cache import _SourceMemo as _SourceMemo
from reconciler.source.load_cache import clear_cache as clear_cache
from reconciler.source.parsed import _Doc as _Doc
from reconciler.source.parsed import _Parsed as _Parsed
from reconciler.source.revision import git_revision
from reconciler.source.schema import schema_problems
from reconciler.source.semantics import (
    build,
    cross_checks,
    document_name,
    raw_depends_on,
    unknown_targets,
)

__all__ = ["MAX_FILE_BYTES", "RACY_SECONDS", "clear_cache", "load_manifests",
           "parse_documents"]

MAX_FILE_BYTES = 1024 * 1024
#: a file modified less than this before it was read is read again next time even when its
#: ``stat`` is unchanged (a second write within the file system's timestamp granularity
#: would not show in its mtime)
RACY_SECONDS = 2.0
_RACY_NS = int(RACY_SECONDS * 1e9)
#: a load that built at least this many documents freezes the heap for the collector
_FREEZE_AFTER = 1000


# ------------------------------------------------------------------ one file


def _parse_file(file: str, text: str, reread: Reread | None = None) -> _Parsed:
    fast = _parse_fast(file, text, reread)
    return fast if fast is not None else _parse_full(file, text)


def _rereader(entry: FileEntry, digest: bytes) -> Reread:
    """The text of the listed file when it still has ``digest`` (None: it changed, or
    cannot be read or decoded now), read as the load read it."""
    def reread() -> str | None:
        try:
            data = read_bounded(entry, MAX_FILE_BYTES)
            if isinstance(data, int) or hashlib.sha256(data).digest() != digest:
                return None
            return data.decode("utf-8")
        except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
            return None

    return reread


def _parse_full(file: str, text: str) -> _Parsed:
    """The full path: the composer (every value with its line) and the JSON Schema."""
    problems: list[Problem] = []
    docs: list[_Doc] = []
    for item in compose(text, file):
        if isinstance(item, Problem):
            problems.append(item)
            continue
        if item.data is None:
            continue  # an empty document (e.g. a trailing '---') is not a manifest
        name = document_name(item.data)
        if not isinstance(item.data, dict):
            problems.append(Problem(
                file, item.line, name,
                "document must be a mapping (apiVersion, kind, metadata, spec), "
                f"got {'a list' if isinstance(item.data, list) else show(item.data)}"))
            continue
        schema = tuple(schema_problems(item, name))
        built = None
        if not schema:
            command, built_problems = build(item, name)
            built = (command, tuple(built_problems))
        rejected = built is None or built[0] is None
        docs.append(_Doc(file, name, item.located, schema, built,
                         raw_depends_on(item.data) if rejected else ()))
    return _Parsed(tuple(problems), tuple(docs))



# ------------------------------------------------------------------ across files


class _NameLines(Mapping[str, tuple[str, int]]):
    """name -> (file, line of its metadata.name): the line computed only when asked."""

    def __init__(self, docs: Mapping[str, _Doc]) -> None:
        self._docs = docs

    def __getitem__(self, name: str) -> tuple[str, int]:
        doc = self._docs[name]
        return doc.file, doc.name_line()

    def __contains__(self, name: object) -> bool:
        return name in self._docs

    def __iter__(self) -> Iterator[str]:
        return iter(self._docs)

    def __len__(self) -> int:
        return len(self._docs)


@dataclass(frozen=True)
class _Assembled:
    commands: tuple[ServiceCommand, ...]
    problems: tuple[Problem, ...]
    invalid: int


def _assemble(files: Sequence[_Parsed]) -> _Assembled:
    """Names unique across files, dependencies that exist and form no cycle."""
    problems: list[Problem] = []
    commands: list[ServiceCommand] = []
    named: dict[str, _Doc] = {}
    located: dict[str, Located] = {}
    rejected: list[_Doc] = []
    invalid = 0
    for parsed in files:
        problems.extend(parsed.problems)
        invalid += len(parsed.problems)
        for doc in parsed.docs:
            doc_problems = list(doc.problems)
            name = doc.name
            if name != UNNAMED:
                first = named.get(name)
                if first is not None:
                    doc_problems.append(Problem(
                        doc.file, doc.name_line(), name,
                        f"metadata.name: duplicate name (first defined at "
                        f"{first.file}:{first.name_line()})"))
                else:
                    named[name] = doc
            if not doc_problems and doc.built is not None:
                command, built_problems = doc.built
                if command is not None:
                    commands.append(command)
                    located[name] = doc.located
                doc_problems = list(built_problems)
            if doc_problems:
                problems.extend(doc_problems)
                invalid += 1
                rejected.append(doc)
    names = _NameLines(named)
    for doc in rejected:  # already invalid: their unknown targets are told, not counted
        problems.extend(unknown_targets(doc.file, doc.name, doc.depends_on, doc.located, names))
    valid, cross = cross_checks(commands, names, located)
    problems.extend(cross)
    invalid += len({p.name for p in cross})
    return _Assembled(tuple(valid), tuple(problems), invalid)


def _result(assembled: _Assembled, extra: Sequence[Problem], *, revision: str,
            files: int) -> LoadResult:
    problems = tuple(sorted([*extra, *assembled.problems],
                            key=lambda p: (p.file, p.line, p.name, p.message)))
    invalid_names, broken = _attribute(problems)
    return LoadResult(
        commands=assembled.commands,
        problems=problems,
        revision=revision,
        files=files,
        invalid=assembled.invalid + len(extra),
        invalid_names=invalid_names,
        broken_files=broken,
        clean=not broken,
    )


def _content_revision(digests: Iterable[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for file, content in digests:
        digest.update(file.encode("utf-8", "backslashreplace") + b"\0" + content + b"\0")
    return "sha256:" + digest.hexdigest()[:16]


def parse_documents(sources: Iterable[tuple[str, str]]) -> LoadResult:
    """Validate ``(file name, text)`` pairs; the pure core of :func:`load_manifests`."""
    parsed: list[_Parsed] = []
    digests: list[tuple[str, bytes]] = []
    for file, text in sources:
        encoded = text.encode("utf-8", "surrogatepass")
        digests.append((file, hashlib.sha256(encoded).digest()))
        if len(encoded) > MAX_FILE_BYTES:
            parsed.append(_Parsed((_too_large(file, len(encoded)),), ()))
            continue
        parsed.append(_parse_file(file, text))
    return _result(_assemble(parsed), (), revision=_content_revision(digests),
                   files=len(digests))


def _attribute(problems: Sequence[Problem]) -> tuple[Mapping[str, Problem], tuple[str, ...]]:
    """Each problem's manifest: a named one makes that name invalid (its first problem is
    kept), a nameless one makes its whole file broken."""
    invalid_names: dict[str, Problem] = {}
    broken: dict[str, None] = {}
    for problem in problems:
        if problem.name == UNNAMED:
            broken.setdefault(problem.file)
        else:
            invalid_names.setdefault(problem.name, problem)
    return MappingProxyType(invalid_names), tuple(broken)


def _too_large(file: str, size: int) -> Problem:
    return Problem(file, 1, UNNAMED, f"file too large: {size} bytes, the limit is "
                   f"{MAX_FILE_BYTES} bytes (1 MiB); not parsed")



# ------------------------------------------------------------------ files on disk


def _read_one(entry: FileEntry) -> bytes | Problem:
    """The bytes of one listed file, or the problem reading it; the size is checked
    (``stat``, then ``fstat``) before any byte is read."""
    name = entry.display
    if entry.size > MAX_FILE_BYTES:
        return _too_large(name, entry.size)
    try:
        data = read_bounded(entry, MAX_FILE_BYTES)
    except FileNotFoundError:
        return Problem(name, 1, UNNAMED, "vanished while it was read (the source is "
                       "changing); not loaded")
    except OSError as exc:
        return Problem(name, 1, UNNAMED, f"cannot read: {exc.strerror or exc}")
    except ValueError:
        return Problem(name, 1, UNNAMED, "not a regular file; not read")
    if isinstance(data, int):
        return _too_large(name, data)
    return data


def _decode(name: str, data: bytes) -> str | Problem:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return Problem(name, line, UNNAMED,
                       f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
                       f"{exc.start} ({exc.reason}); save the file as UTF-8")


def load_manifests(
    *paths: str | os.PathLike[str],
    revision: str | None = None,
    max_files: int = MAX_FILES,
    shown_as: str | None = None,
) -> LoadResult:
    """Load every ``*.yaml``/``*.yml`` under ``paths`` (recursively, sorted; dot-folders
    such as ``.git`` skipped; see :mod:`reconciler.source.files` for the safe walk).

    The revision is ``revision`` when given (a git source knows its commit), else the git
    commit when the first path is in a git work tree (a git-sync worktree or a checkout),
    else a content hash. ``shown_as`` (one path only): what problems and commands show
    instead of the path (a git source shows the path in the repository).

    Files are remembered per source (the paths, or ``shown_as`` for a git source whose
    tree moves): an unchanged file is not validated again, an unchanged tree returns the
    previous result itself (see the module docstring)."""
    roots = [Path(p) for p in paths]
    if shown_as is not None and len(roots) != 1:
        raise ValueError("shown_as needs exactly one path")
    key: tuple[Any, ...] = (("shown", shown_as) if shown_as is not None
                            else tuple(os.fspath(r) for r in roots), max_files)
    memo = _memo(key)
    with memo.lock:
        return _load(memo, roots, revision=revision, max_files=max_files, shown_as=shown_as)


def _load(memo: _SourceMemo, roots: Sequence[Path], *, revision: str | None, max_files: int,
          shown_as: str | None) -> LoadResult:
    # building thousands of values: no collections meanwhile (nothing cyclic)
    with collections_paused():
        result, built = _load_files(memo, roots, revision=revision, max_files=max_files,
                                    shown_as=shown_as)
    if built >= _FREEZE_AFTER:
        gc.freeze()  # the manifests live long: later collections skip them
    return result


def _load_files(memo: _SourceMemo, roots: Sequence[Path], *, revision: str | None,
                max_files: int, shown_as: str | None) -> tuple[LoadResult, int]:
    """The load, and how many documents (and problems) it built anew."""
    extra: list[Problem] = []
    files: list[_FileMemo] = []
    names: list[str] = []
    remembered: dict[str, _FileMemo] = {}
    built = 0
    for root in roots:
        listing = list_files(root, max_files=max_files, display_root=shown_as)
        extra.extend(listing.problems)
        for entry in listing.entries:
            known = memo.files.get(entry.display)
            got = _file(entry, known)
            if isinstance(got, Problem):
                extra.append(got)
                continue
            if got is not known and (known is None or got.parsed is not known.parsed):
                built += len(got.parsed.docs) + len(got.parsed.problems)
            remembered[entry.display] = got
            files.append(got)
            names.append(entry.display)
    memo.files = remembered
    if revision is None and roots:
        revision = git_revision(roots[0])
    content = tuple(zip(names, (f.digest for f in files), strict=True))
    signature = (content, tuple(extra))
    own = revision or _content_revision(content)
    previous = memo.result
    if previous is not None and memo.signature == signature:
        return (previous if own == previous.revision
                else replace(previous, revision=own)), built
    result = _result(_assemble([f.parsed for f in files]), extra, revision=own,
                     files=len(files) + len(extra))
    memo.signature, memo.result = signature, result
    return result, built


def _file(entry: FileEntry, known: _FileMemo | None) -> _FileMemo | Problem:
    """One listed file: the remembered one when its stat is unchanged (and was not racy),
    else read, and parsed again only when its content changed."""
    stat = file_stat(entry.path)
    if (known is not None and known.trusted and stat is not None and known.stat == stat
            and known.path == entry.path):
        return known
    started = time.time_ns()
    data = _read_one(entry)
    if isinstance(data, Problem):
        return data
    digest = hashlib.sha256(data).digest()
    trusted = stat is not None and started - max(stat[3], stat[4]) > _RACY_NS
    if known is not None and known.digest == digest:
        return _FileMemo(entry.path, stat, trusted, digest, known.parsed)
    text = _decode(entry.display, data)
    if isinstance(text, Problem):
        return text
    return _FileMemo(entry.path, stat, trusted, digest,
                     _parse_file(entry.display, text, _rereader(entry, digest)))
