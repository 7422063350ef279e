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
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from reconciler.errors import Problem
from reconciler.model.manifest import API_VERSION, KIND, LoadResult, ServiceCommand
from reconciler.source.composer import UNNAMED, Located, RawDocument, compose, show
from reconciler.source.files import MAX_FILES, FileEntry, list_files, read_bounded
from reconciler.source.revision import git_revision
from reconciler.source.schema import schema_problems
from reconciler.source.semantics import build, cross_checks, document_name

__all__ = ["MAX_FILE_BYTES", "RACY_SECONDS", "clear_cache", "load_manifests",
           "parse_documents"]

MAX_FILE_BYTES = 1024 * 1024
#: a file modified less than this before it was read is read again next time even when its
#: ``stat`` is unchanged (a second write within the file system's timestamp granularity
#: would not show in its mtime)
RACY_SECONDS = 2.0
_RACY_NS = int(RACY_SECONDS * 1e9)
#: longer texts take the full path: below this, a document cannot hold more values than
#: the composer's bound (:data:`reconciler.source.composer.MAX_NODES`)
_FAST_MAX_CHARS = 150_000
#: as the composer's own fast path: more flow openers and libyaml's recursion is not trusted
_FAST_MAX_FLOW = 1000
#: deepest payload the fast path takes (the composer's bound is 100 levels in all)
_FAST_MAX_PAYLOAD_DEPTH = 50
#: sources whose files are remembered (each directory or git path loaded)
_MEMO_SOURCES = 8
#: a load that built at least this many documents freezes the heap for the collector
_FREEZE_AFTER = 1000


# ------------------------------------------------------------------ one file


@dataclass(frozen=True)
class _Doc:
    """One document of a file, validated on its own (what other files cannot change)."""

    file: str
    name: str
    located: Located
    #: schema problems: the document is invalid, nothing was built
    problems: tuple[Problem, ...]
    #: the built command (None: semantic problems) and its problems; None when ``problems``
    built: tuple[ServiceCommand | None, tuple[Problem, ...]] | None

    def name_line(self) -> int:
        return self.located.line_of(["metadata", "name"])


@dataclass(frozen=True)
class _Parsed:
    """One file: the problems that are documents of their own (syntax errors, not a
    mapping, too large), and every named or nameless mapping document in order."""

    problems: tuple[Problem, ...]
    docs: tuple[_Doc, ...]


class _LazyLocated(Located):
    """The lines of one fast-path document, computed (by composing its file again) only
    when a problem asks for one."""

    def __init__(self, text: str, file: str, line: int, index: int) -> None:
        super().__init__()
        self._source: tuple[str, str, int, int] | None = (text, file, line, index)

    def line_of(self, path: Sequence[str | int], *, key: bool = False) -> int:
        if self._source is not None:
            self._resolve()
        return super().line_of(path, key=key)

    def _resolve(self) -> None:
        assert self._source is not None
        text, file, line, index = self._source
        self._source = None
        raw = [item for item in compose(text, file) if isinstance(item, RawDocument)]
        found = next((d for d in raw if d.line == line), None)
        if found is None and index < len(raw):  # pragma: no cover - same parser, same lines
            found = raw[index]
        if found is not None:
            self.value_lines = found.located.value_lines
            self.key_lines = found.located.key_lines


def _parse_file(file: str, text: str) -> _Parsed:
    fast = _parse_fast(file, text)
    return fast if fast is not None else _parse_full(file, text)


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
        docs.append(_Doc(file, name, item.located, schema, built))
    return _Parsed(tuple(problems), tuple(docs))


class _Unusual(Exception):
    """The fast path met something only the full path may judge."""


def _unusual(*_args: Any) -> Any:
    raise _Unusual


_TAG = "tag:yaml.org,2002:"
_STR_TAG = _TAG + "str"

_FastLoader: type[Any] | None = None
if getattr(yaml, "__with_libyaml__", False):

    class _CFastLoader(yaml.CSafeLoader):
        """libyaml's parser and composer, then plain values: what the composer would make
        of the same nodes, or :class:`_Unusual`."""

        def construct_mapping(self, node: yaml.MappingNode,  # type: ignore[override]
                              deep: bool = False) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag != _STR_TAG or not isinstance(key_node, yaml.ScalarNode):
                    raise _Unusual  # not text, a merge key, a complex key
                key = key_node.value
                if key in out:
                    raise _Unusual  # a duplicate: the full path names both lines
                out[key] = self.construct_object(value_node, deep=deep)
            return out

        def construct_finite_float(self, node: yaml.ScalarNode) -> float:
            value = self.construct_yaml_float(node)
            if not math.isfinite(value):
                raise _Unusual
            return value

        def construct_timestamp_text(self, node: yaml.ScalarNode) -> str:
            return str(node.value)  # dates stay text, as the composer keeps them

    _safe = yaml.constructor.SafeConstructor.yaml_constructors
    _CFastLoader.yaml_constructors = {
        _TAG + "null": _safe[_TAG + "null"],
        _TAG + "bool": _safe[_TAG + "bool"],
        _TAG + "int": _safe[_TAG + "int"],
        _TAG + "float": _CFastLoader.construct_finite_float,
        _TAG + "str": _safe[_TAG + "str"],
        _TAG + "timestamp": _CFastLoader.construct_timestamp_text,
        _TAG + "seq": _safe[_TAG + "seq"],
        _TAG + "map": _safe[_TAG + "map"],
        None: _unusual,
    }
    _CFastLoader.yaml_multi_constructors = {}
    _FastLoader = _CFastLoader


def _parse_fast(file: str, text: str) -> _Parsed | None:
    """The file through libyaml straight to values, every document surely valid for the
    schema; None when anything needs the full path."""
    if (_FastLoader is None or len(text) > _FAST_MAX_CHARS or "&" in text or "!" in text
            or "<<" in text or text.count("[") + text.count("{") > _FAST_MAX_FLOW):
        return None
    found: list[tuple[int, dict[str, Any]]] = []
    loader = _FastLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            data = loader.construct_document(node)
            if data is None:
                continue  # an empty document
            if not _surely_valid(data):
                return None
            found.append((node.start_mark.line + 1, data))
    except Exception:
        return None
    finally:
        loader.dispose()
    docs = []
    for index, (line, data) in enumerate(found):
        name = data["metadata"]["name"]
        located = _LazyLocated(text, file, line, index)
        command, problems = build(RawDocument(file, line, data, located), name)
        docs.append(_Doc(file, name, located, (), (command, tuple(problems))))
    return _Parsed((), tuple(docs))


# ------------------------------------------------------------------ the schema, strictly

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_COMMAND = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DURATION = re.compile(r"0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+")
_TOP = frozenset({"apiVersion", "kind", "metadata", "spec"})
_METADATA = frozenset({"name", "labels", "annotations"})
_SPEC = frozenset({"service", "serviceName", "command", "payload", "context", "policy",
                   "rerun", "timeout", "retry", "dependsOn", "suspend"})
_RETRY = frozenset({"limit", "backoff", "maxBackoff"})
_SCHEDULE = frozenset({"schedule", "timezone", "startingDeadline"})


def _text(value: object, pattern: re.Pattern[str] | None = None, *, low: int = 1,
          high: int | None = None) -> bool:
    if type(value) is not str or len(value) < low or (high is not None and len(value) > high):
        return False
    return pattern is None or pattern.fullmatch(value) is not None


def _texts(value: object, *, null: bool = False) -> bool:
    """A mapping of text to text (or null)."""
    return type(value) is dict and all(
        type(v) is str or (null and v is None) for v in value.values())


def _shallow(value: object, depth: int) -> bool:
    if depth > _FAST_MAX_PAYLOAD_DEPTH:
        return False
    if type(value) is dict:
        return all(_shallow(v, depth + 1) for v in value.values())
    if type(value) is list:
        return all(_shallow(v, depth + 1) for v in value)
    return True


def _surely_valid(data: object) -> bool:
    """True only for a document the JSON Schema accepts (stricter where it is cheaper:
    ``$`` does not accept a trailing newline, an integer is an ``int``): what this says
    is valid needs no schema validation; anything else gets it."""
    if type(data) is not dict or data.keys() != _TOP:
        return False
    if data["apiVersion"] != API_VERSION or data["kind"] != KIND:
        return False
    meta, spec = data["metadata"], data["spec"]
    if type(meta) is not dict or not meta.keys() <= _METADATA:
        return False
    if not _text(meta.get("name"), _NAME, high=63):
        return False
    if ("labels" in meta and not _texts(meta["labels"])) or (
            "annotations" in meta and not _texts(meta["annotations"])):
        return False
    if type(spec) is not dict or not spec.keys() <= _SPEC:
        return False
    if not _text(spec.get("command"), _COMMAND, high=255):
        return False
    for key in ("service", "serviceName"):
        if key in spec and not _text(spec[key]):
            return False
    if "payload" in spec and not (type(spec["payload"]) is dict
                                  and _shallow(spec["payload"], 0)):
        return False
    if "context" in spec and not _texts(spec["context"], null=True):
        return False
    if "policy" in spec and not _policy(spec["policy"]):
        return False
    if "rerun" in spec and type(spec["rerun"]) not in (str, int):
        return False
    if "timeout" in spec and not _text(spec["timeout"], _DURATION):
        return False
    if "retry" in spec:
        retry = spec["retry"]
        if type(retry) is not dict or not retry.keys() <= _RETRY:
            return False
        if "limit" in retry and not (type(retry["limit"]) is int and 0 <= retry["limit"] <= 100):
            return False
        for key in ("backoff", "maxBackoff"):
            if key in retry and not _text(retry[key], _DURATION):
                return False
    if "dependsOn" in spec:
        deps = spec["dependsOn"]
        if type(deps) is not list or not all(_text(d, _NAME) for d in deps):
            return False
        if len(set(deps)) != len(deps):
            return False
    return "suspend" not in spec or type(spec["suspend"]) is bool


def _policy(policy: object) -> bool:
    if policy == "once" and type(policy) is str:
        return True
    if type(policy) is not dict:
        return False
    if policy.keys() == {"interval"}:
        return _text(policy["interval"], _DURATION)
    if "schedule" not in policy or not policy.keys() <= _SCHEDULE:
        return False
    if not _text(policy["schedule"]):
        return False
    if "timezone" in policy and not _text(policy["timezone"]):
        return False
    return "startingDeadline" not in policy or _text(policy["startingDeadline"], _DURATION)


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
    valid, cross = cross_checks(commands, _NameLines(named), located)
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

_Stat = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class _FileMemo:
    """What one file was at its last load: where, its stat, whether that stat can be
    trusted, its content digest, and its validated documents."""

    path: str
    stat: _Stat | None
    trusted: bool
    digest: bytes
    parsed: _Parsed


@dataclass
class _SourceMemo:
    """The last load of one source: each file, the tree's signature and the result."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    files: dict[str, _FileMemo] = field(default_factory=dict)
    signature: tuple[Any, ...] | None = None
    result: LoadResult | None = None


_memos: OrderedDict[tuple[Any, ...], _SourceMemo] = OrderedDict()
_memos_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every file and tree remembered (tests, benchmarks of a cold load)."""
    with _memos_lock:
        _memos.clear()


def _memo(key: tuple[Any, ...]) -> _SourceMemo:
    with _memos_lock:
        memo = _memos.get(key)
        if memo is None:
            memo = _memos[key] = _SourceMemo()
            while len(_memos) > _MEMO_SOURCES:
                _memos.popitem(last=False)
        else:
            _memos.move_to_end(key)
        return memo


def _stat(path: str) -> _Stat | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


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
    extra: list[Problem] = []
    files: list[_FileMemo] = []
    names: list[str] = []
    remembered: dict[str, _FileMemo] = {}
    built = 0
    enabled = gc.isenabled()
    gc.disable()  # building thousands of values: no collections meanwhile (nothing cyclic)
    try:
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
            return previous if own == previous.revision else replace(previous, revision=own)
        result = _result(_assemble([f.parsed for f in files]), extra, revision=own,
                         files=len(files) + len(extra))
        memo.signature, memo.result = signature, result
        return result
    finally:
        if enabled:
            gc.enable()
            if built >= _FREEZE_AFTER:
                gc.freeze()  # the manifests live long: later collections skip them


def _file(entry: FileEntry, known: _FileMemo | None) -> _FileMemo | Problem:
    """One listed file: the remembered one when its stat is unchanged (and was not racy),
    else read, and parsed again only when its content changed."""
    stat = _stat(entry.path)
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
    return _FileMemo(entry.path, stat, trusted, digest, _parse_file(entry.display, text))
