"""Manifest types: one valid ``ServiceCommand`` document as frozen values, no I/O."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal

from reconciler.errors import Problem
from reconciler.model.identity import canonical_intent, spec_hash

__all__ = [
    "API_VERSION",
    "DEFAULT_STARTING_DEADLINE",
    "DEFAULT_TIMEOUT",
    "KIND",
    "MAX_PAYLOAD_CHARS",
    "Hold",
    "HoldReason",
    "Interval",
    "LoadResult",
    "Once",
    "Policy",
    "RetryPolicy",
    "Schedule",
    "ServiceCommand",
    "ServiceRef",
]

API_VERSION = "ailake.reconciler/v1"
KIND = "ServiceCommand"
#: the API's limit on a payload, in characters of compact JSON
MAX_PAYLOAD_CHARS = 15_000
DEFAULT_TIMEOUT = timedelta(hours=1)
DEFAULT_STARTING_DEADLINE = timedelta(hours=1)
#: windows whose canonical intent and spec hash a command keeps (the current one and the
#: one before it are what a pass asks for; a schedule moves forward only)
_INTENT_CACHE_WINDOWS = 4


@dataclass(frozen=True)
class Once:
    """Run exactly once for the spec."""

    kind: Literal["once"] = "once"


@dataclass(frozen=True)
class Interval:
    """Run once in every window of ``every``, windows aligned to the Unix epoch."""

    every: timedelta
    kind: Literal["interval"] = "interval"


@dataclass(frozen=True)
class Schedule:
    """Run once per cron tick, read in ``timezone``; late ticks start within a deadline."""

    cron: str
    timezone: str = "UTC"
    starting_deadline: timedelta = DEFAULT_STARTING_DEADLINE
    kind: Literal["schedule"] = "schedule"


Policy = Once | Interval | Schedule


@dataclass(frozen=True)
class RetryPolicy:
    """Retries after a failed attempt: ``limit`` more, waiting backoff * 2**n, capped."""

    limit: int = 3
    backoff: timedelta = timedelta(seconds=30)
    max_backoff: timedelta = timedelta(minutes=10)

    def delay(self, failed_attempts: int) -> timedelta:
        """The wait after the ``failed_attempts``-th failure (1-based)."""
        exponent = max(0, failed_attempts - 1)
        seconds = self.backoff.total_seconds() * (2 ** min(exponent, 32))
        return timedelta(seconds=min(seconds, self.max_backoff.total_seconds()))


@dataclass(frozen=True)
class ServiceRef:
    """The service as the manifest wrote it: an id, or a name resolved through the API."""

    id: str | None = None
    name: str | None = None

    @property
    def as_written(self) -> dict[str, str]:
        """``{"service": id}`` or ``{"serviceName": name}``: the identity's service part."""
        if self.id is not None:
            return {"service": self.id}
        return {"serviceName": self.name or ""}

    @property
    def label(self) -> str:
        """A short human/metric label for the service."""
        return self.id if self.id is not None else (self.name or "")


@dataclass(frozen=True)
class ServiceCommand:
    """One valid manifest document: what must have run, where, and how often."""

    name: str
    service: ServiceRef
    command: str
    payload: Mapping[str, Any] | None = None
    context: Mapping[str, str | None] | None = None
    policy: Policy = field(default_factory=Once)
    rerun: str = ""
    timeout: timedelta = DEFAULT_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    depends_on: tuple[str, ...] = ()
    suspend: bool = False
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    file: str = ""
    line: int = 0
    #: window -> (canonical intent, spec hash), computed once per window and kept with the
    #: command (a cache: not part of equality, repr or ``replace``; at most
    #: ``_INTENT_CACHE_WINDOWS`` windows are kept, the newest)
    _intents: dict[str, tuple[str, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def canonical_intent(self, window: str = "") -> str:
        """The canonical intent text of this command for ``window`` (DESIGN section 3).

        Only name, service as written, command, payload, context, rerun and the window
        take part: timeout, retry, dependsOn, suspend and labels never re-run a command.
        Computed once per window (the command is frozen, so the text cannot change).
        """
        return self._intent(window)[0]

    def spec_hash(self, window: str = "") -> str:
        """sha256 of :meth:`canonical_intent` (the key of the intent in the state store);
        computed once per window."""
        return self._intent(window)[1]

    def _intent(self, window: str) -> tuple[str, str]:
        cached = self._intents.get(window)
        if cached is not None:
            return cached
        text = canonical_intent(
            name=self.name,
            service=self.service.as_written,
            command=self.command,
            payload=dict(self.payload) if self.payload is not None else None,
            context=dict(self.context) if self.context is not None else None,
            rerun=self.rerun,
            window=window,
        )
        # interned: the state store's records of this intent share the same two strings
        cached = (sys.intern(text), sys.intern(spec_hash(text)))
        if len(self._intents) >= _INTENT_CACHE_WINDOWS:  # windows only move forward
            self._intents.clear()
        self._intents[window] = cached
        return cached


@dataclass(frozen=True)
class LoadResult:
    """Every valid command, every problem, and the source revision they came from.

    What a pass needs to keep the state of manifests it cannot read now
    (:mod:`reconciler.source.continuity`): the names of invalid documents, the files that
    could not be parsed, and whether the load was clean.
    """

    commands: tuple[ServiceCommand, ...]
    problems: tuple[Problem, ...]
    revision: str
    files: int = 0
    #: number of documents that were invalid (and skipped)
    invalid: int = 0
    #: manifests whose document failed validation but whose ``metadata.name`` is readable:
    #: name -> its first problem (FILE:LINE and message). A valid manifest of the same name
    #: elsewhere (a duplicate) may be in ``commands`` too.
    invalid_names: Mapping[str, Problem] = field(
        default_factory=lambda: MappingProxyType({}))
    #: files (as shown in problems) holding something no name can be given to: unreadable,
    #: not UTF-8, too large, a YAML syntax error, a document without a readable name; also
    #: whatever the listing refused (a symlink leaving the root, a folder that cannot be read)
    broken_files: tuple[str, ...] = ()
    #: every file listed, read and parsed, every document attributed to a name: only a
    #: manifest absent from a clean load may be orphaned
    clean: bool = True
    #: the manifests to hold (not valid now, not to be orphaned): set by the daemon from
    #: :func:`reconciler.source.continuity.continuity` (:func:`~reconciler.source.continuity.
    #: with_held`); the loader leaves it empty. The planner reads it.
    held: Mapping[str, Hold] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def by_name(self) -> Mapping[str, ServiceCommand]:
        return {c.name: c for c in self.commands}


class HoldReason(StrEnum):
    """Why a manifest that is not valid now keeps its state instead of being orphaned."""

    INVALID = "invalid"  #: its document fails validation; its name is readable
    BROKEN_FILE = "broken-file"  #: the file that held it cannot be parsed now
    UNCLEAN_SOURCE = "unclean-source"  #: absent, but the source did not load cleanly
    EMPTY_SOURCE = "empty-source"  #: absent from a suspiciously empty source


@dataclass(frozen=True)
class Hold:
    """One held manifest (:mod:`reconciler.source.continuity`): its last valid intent keeps
    its record and state, nothing new is submitted, it is not orphaned. A plain value, so
    the planner can take it without importing the source."""

    name: str
    reason: HoldReason
    #: the problem that makes it invalid (FILE:LINE), or the first problem of its broken
    #: file; None for the source-wide reasons
    problem: Problem | None
    message: str

    @property
    def shows_invalid(self) -> bool:
        """Whether views show it as ``invalid`` (its own document or file is at fault)."""
        return self.reason in (HoldReason.INVALID, HoldReason.BROKEN_FILE)
