"""The outcome of validating one manifest file on its own: what other files cannot change.

Made by the full path (:func:`reconciler.source.loader._parse_full`) and the fast path
(:func:`reconciler.source.fast_path._parse_fast`), kept per file by
:mod:`reconciler.source.load_cache`, and assembled across files by the loader.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.errors import Problem
from reconciler.model.manifest import ServiceCommand
from reconciler.source.composer import Located


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
    #: ``(index, target)`` of the ``dependsOn`` entries of a document that built nothing
    #: (its unknown targets are told too); empty for a built command
    depends_on: tuple[tuple[int, str], ...] = ()

    def name_line(self) -> int:
        return self.located.line_of(["metadata", "name"])


@dataclass(frozen=True)
class _Parsed:
    """One file: the problems that are documents of their own (syntax errors, not a
    mapping, too large), and every named or nameless mapping document in order."""

    problems: tuple[Problem, ...]
    docs: tuple[_Doc, ...]
