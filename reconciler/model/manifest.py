"""Manifest types: one valid ``ServiceCommand`` document as frozen values, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
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

    def canonical_intent(self, window: str = "") -> str:
        """The canonical intent text of this command for ``window`` (DESIGN section 3).

        Only name, service as written, command, payload, context, rerun and the window
        take part: timeout, retry, dependsOn, suspend and labels never re-run a command.
        """
        return canonical_intent(
            name=self.name,
            service=self.service.as_written,
            command=self.command,
            payload=dict(self.payload) if self.payload is not None else None,
            context=dict(self.context) if self.context is not None else None,
            rerun=self.rerun,
            window=window,
        )

    def spec_hash(self, window: str = "") -> str:
        """sha256 of :meth:`canonical_intent` (the key of the intent in the state store)."""
        return spec_hash(self.canonical_intent(window))


@dataclass(frozen=True)
class LoadResult:
    """Every valid command, every problem, and the source revision they came from."""

    commands: tuple[ServiceCommand, ...]
    problems: tuple[Problem, ...]
    revision: str
    files: int = 0
    #: number of documents that were invalid (and skipped)
    invalid: int = 0

    @property
    def by_name(self) -> Mapping[str, ServiceCommand]:
        return {c.name: c for c in self.commands}
