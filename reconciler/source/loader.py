"""Loading: files to validated ``ServiceCommand`` objects and every problem found.

An invalid document is reported (``FILE:LINE: NAME: message``) and skipped; it never hides the
problems of the others or blocks the valid ones.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from reconciler.errors import Problem
from reconciler.model.manifest import LoadResult, ServiceCommand
from reconciler.source.composer import UNNAMED, Located, compose, show
from reconciler.source.files import yaml_files
from reconciler.source.revision import git_revision
from reconciler.source.schema import schema_problems
from reconciler.source.semantics import build, cross_checks, document_name

__all__ = ["MAX_FILE_BYTES", "load_manifests", "parse_documents"]

MAX_FILE_BYTES = 1024 * 1024


def parse_documents(sources: Iterable[tuple[str, str]]) -> LoadResult:
    """Validate ``(file name, text)`` pairs; the pure core of :func:`load_manifests`."""
    problems: list[Problem] = []
    commands: list[ServiceCommand] = []
    named: dict[str, tuple[str, int]] = {}
    located: dict[str, Located] = {}
    files = 0
    invalid = 0
    digest = hashlib.sha256()
    for file, text in sources:
        files += 1
        encoded = text.encode("utf-8", "surrogatepass")
        digest.update(file.encode() + b"\0" + encoded + b"\0")
        if len(encoded) > MAX_FILE_BYTES:
            problems.append(_too_large(file, len(encoded)))
            invalid += 1
            continue
        for item in compose(text, file):
            if isinstance(item, Problem):
                problems.append(item)
                invalid += 1
                continue
            if item.data is None:
                continue  # an empty document (e.g. a trailing '---') is not a manifest
            name = document_name(item.data)
            if not isinstance(item.data, dict):
                problems.append(Problem(
                    file, item.line, name,
                    "document must be a mapping (apiVersion, kind, metadata, spec), "
                    f"got {'a list' if isinstance(item.data, list) else show(item.data)}"))
                invalid += 1
                continue
            doc_problems = schema_problems(item, name)
            if name != UNNAMED:
                if name in named:
                    first_file, first_line = named[name]
                    doc_problems.append(Problem(
                        file, item.located.line_of(["metadata", "name"]), name,
                        f"metadata.name: duplicate name (first defined at "
                        f"{first_file}:{first_line})"))
                else:
                    named[name] = (file, item.located.line_of(["metadata", "name"]))
            if not doc_problems:
                command, doc_problems = build(item, name)
                if command is not None:
                    commands.append(command)
                    located[name] = item.located
            if doc_problems:
                problems.extend(doc_problems)
                invalid += 1
    commands, cross = cross_checks(commands, named, located)
    problems.extend(cross)
    invalid += len({p.name for p in cross})
    return LoadResult(
        commands=tuple(commands),
        problems=tuple(sorted(problems, key=lambda p: (p.file, p.line, p.name, p.message))),
        revision="sha256:" + digest.hexdigest()[:16],
        files=files,
        invalid=invalid,
    )


def _too_large(file: str, size: int) -> Problem:
    return Problem(file, 1, UNNAMED, f"file too large: {size} bytes, the limit is "
                   f"{MAX_FILE_BYTES} bytes (1 MiB); not parsed")


def _read(paths: Sequence[Path]) -> Iterator[tuple[str, str] | Problem]:
    for root in paths:
        if not root.exists():
            yield Problem(str(root), 1, UNNAMED, "no such file or directory")
            continue
        for file in yaml_files(root):
            name = str(file)
            try:
                with file.open("rb") as fh:  # bounded: never more than the limit + 1 byte
                    data = fh.read(MAX_FILE_BYTES + 1)
                if len(data) > MAX_FILE_BYTES:
                    yield _too_large(name, max(file.stat().st_size, len(data)))
                    continue
                yield name, data.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = data.count(b"\n", 0, exc.start) + 1
                yield Problem(name, line, UNNAMED,
                              f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
                              f"{exc.start} ({exc.reason}); save the file as UTF-8")
            except OSError as exc:
                yield Problem(name, 1, UNNAMED, f"cannot read: {exc.strerror}")


def load_manifests(*paths: str | os.PathLike[str]) -> LoadResult:
    """Load every ``*.yaml``/``*.yml`` under ``paths`` (recursively, sorted; dot-folders
    such as ``.git`` skipped). The revision is the git commit when the first path is in a
    git work tree, else a content hash."""
    roots = [Path(p) for p in paths]
    read_problems: list[Problem] = []
    sources: list[tuple[str, str]] = []
    for item in _read(roots):
        if isinstance(item, Problem):
            read_problems.append(item)
        else:
            sources.append(item)
    result = parse_documents(sources)
    revision = git_revision(roots[0]) if roots else None
    return LoadResult(
        commands=result.commands,
        problems=tuple(sorted([*read_problems, *result.problems])),
        revision=revision or result.revision,
        files=result.files + len(read_problems),
        invalid=result.invalid + len(read_problems),
    )
