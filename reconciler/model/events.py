"""The events of an intent's lifecycle: what the engine learned, as frozen values.

:func:`reconciler.model.lifecycle.transition` turns each into the intent's next record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from reconciler.model.records import NewIntent
from reconciler.model.states import OperationStatus

__all__ = [
    "Accepted",
    "Claimed",
    "Deferred",
    "Event",
    "GaveUp",
    "Lost",
    "NeverArrived",
    "NotVisible",
    "ObservedFailed",
    "ObservedPending",
    "ObservedSucceeded",
    "Refused",
    "Retired",
    "RetryRequested",
    "Revived",
    "TimedOut",
    "Unresolvable",
]

Error = Mapping[str, Any]


@dataclass(frozen=True)
class Claimed:
    """Attempt ``attempt`` is recorded as submitting, before its POST (write-ahead)."""

    intent: NewIntent
    attempt: int
    operation_id: str
    service_id: str | None
    revision: str
    #: found on the server by a probe (adoption), not about to be sent: no event
    adopted: bool = False


@dataclass(frozen=True)
class Accepted:
    """The run POST got a 202 naming ``operation_id``; first look at ``next_poll_at``."""

    operation_id: str
    next_poll_at: datetime


@dataclass(frozen=True)
class Deferred:
    """A request could not settle the intent now; try again at ``next_poll_at``."""

    next_poll_at: datetime
    error: Error | None = None
    #: the server certainly did not execute the attempt's run request
    unsent: bool = False


@dataclass(frozen=True)
class Refused:
    """The API refused the run request for good (a 4xx that no retry can fix)."""

    error: Error


@dataclass(frozen=True)
class NeverArrived:
    """A lookup proved the attempt's POST never reached the server, and it is not re-sent."""


@dataclass(frozen=True)
class ObservedPending:
    """The server shows the operation, not finished; ``status`` as it reported it
    (``pending``, or a status this version does not know, followed all the same)."""

    operation_id: str
    next_poll_at: datetime
    poll_count: int
    status: str = OperationStatus.PENDING


@dataclass(frozen=True)
class NotVisible:
    """An accepted operation answered 404: not visible yet, or gone. Look again."""

    next_poll_at: datetime


@dataclass(frozen=True)
class Lost:
    """An accepted operation stayed invisible past the not-found tolerance (and a last
    look found nothing)."""

    reason: str


@dataclass(frozen=True)
class ObservedSucceeded:
    operation_id: str
    result: Mapping[str, Any] | None


@dataclass(frozen=True)
class ObservedFailed:
    """The operation failed; ``retry_at`` is when the next attempt is due (None: stall)."""

    operation_id: str
    error: Error
    retry_at: datetime | None
    reason: str = ""


@dataclass(frozen=True)
class TimedOut:
    reason: str


@dataclass(frozen=True)
class GaveUp:
    reason: str


@dataclass(frozen=True)
class Unresolvable:
    """The intent cannot even be submitted (its service does not exist)."""

    intent: NewIntent
    error: Error
    revision: str


@dataclass(frozen=True)
class Retired:
    why: Literal["orphaned", "superseded"]
    reason: str = ""


@dataclass(frozen=True)
class Revived:
    """A retired intent is asked for again (a revert, a re-added manifest): it is current
    once more, in the state it was retired in; nothing is sent for it."""


@dataclass(frozen=True)
class RetryRequested:
    """A human asked for another try (``reconciler retry NAME``)."""


Event = (Claimed | Accepted | Deferred | Refused | NeverArrived | ObservedPending
         | ObservedSucceeded | ObservedFailed | NotVisible | Lost | TimedOut | GaveUp
         | Unresolvable | Retired | Revived | RetryRequested)
