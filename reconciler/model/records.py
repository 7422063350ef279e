"""The recorded state of intents and their attempts: frozen values, no I/O.

The store persists them; the planner and the engine read them. Times are timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.model.states import IN_FLIGHT, IntentState, OperationStatus

__all__ = ["IntentRecord", "NewIntent", "OperationRecord"]


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
    status: OperationStatus
    error: Mapping[str, Any] | None
    result: Mapping[str, Any] | None
    revision: str
