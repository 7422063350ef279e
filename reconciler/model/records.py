"""The recorded state of intents and their attempts: frozen values, no I/O.

The store persists them; the planner and the engine read them. Times are timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.model.states import IN_FLIGHT, IntentState

__all__ = ["Epoch", "IntentRecord", "NewIntent", "OperationRecord"]


@dataclass(frozen=True)
class NewIntent:
    """What the engine knows of an intent when it first records it."""

    spec_hash: str
    name: str
    service: str
    command: str
    window: str
    canonical: str


@dataclass(frozen=True)
class IntentRecord:
    """The recorded state of one intent (one spec hash)."""

    spec_hash: str
    name: str
    service: str
    command: str
    window: str
    canonical: str
    status: IntentState
    attempts: int
    retry_base: int
    operation_id: str | None
    service_id: str | None
    first_submitted_at: datetime | None
    attempt_started_at: datetime | None
    next_attempt_at: datetime | None
    next_poll_at: datetime | None
    poll_count: int
    last_error: Mapping[str, Any] | None
    retired: str | None
    revision: str
    created_at: datetime
    updated_at: datetime
    succeeded_at: datetime | None
    #: when the server first showed the current attempt (its 202, or a lookup): from then
    #: on no 404 ever leads to sending it again
    accepted_at: datetime | None = None
    #: the first 404 of an accepted operation (None while it is visible)
    missing_since: datetime | None = None
    #: bumped by every recorded transition: the compare-and-set of concurrent writers
    version: int = 0

    @property
    def in_flight(self) -> bool:
        return self.status in IN_FLIGHT

    @property
    def current_attempt(self) -> int:
        """The 0-based number of the latest attempt (-1 before the first)."""
        return self.attempts - 1


@dataclass(frozen=True)
class OperationRecord:
    """One attempt of one intent: the operation id sent, and how it ended."""

    operation_id: str
    spec_hash: str
    name: str
    attempt: int
    service_id: str | None
    submitted_at: datetime
    finished_at: datetime | None
    #: an :class:`OperationStatus`, or a status the server reported that this version does
    #: not know (``cancelled``, ``running``), recorded as it came
    status: str
    error: Mapping[str, Any] | None
    result: Mapping[str, Any] | None
    revision: str


@dataclass(frozen=True)
class Epoch:
    """A stretch of time in which one process owned the store without a break (a new or
    recovered store, or leadership gained, starts the next one)."""

    id: int
    started_at: datetime
    reason: str
    holder: str
    #: when its adoption pass had probed every desired intent (None: not yet)
    adopted_at: datetime | None
