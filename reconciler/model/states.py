"""The state names of the product, defined once: an intent's and an operation's."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["IN_FLIGHT", "RECORDED", "SETTLED_BAD", "TERMINAL", "IntentState", "OperationStatus"]


class IntentState(StrEnum):
    """How one intent (and so its manifest) stands. The first five are recorded in the
    store; the others are what the planner reports for a manifest with no such record."""

    SUBMITTING = "submitting"  #: claimed: the run POST is about to be, or may have been, sent
    PENDING = "pending"  #: the server has the operation and it is running
    IN_SYNC = "in_sync"  #: the operation succeeded: nothing more to do for this spec
    FAILED = "failed"  #: the last attempt failed; another one comes after the backoff
    STALLED = "stalled"  #: no attempt will come without a human (limits, deadline, refusal)
    LOST = "lost"  #: accepted, then not visible on the server past the not-found tolerance
    WAITING = "waiting"  #: not submitted yet: dependencies, schedule or capacity
    SUSPENDED = "suspended"  #: ``suspend: true``: nothing new is sent
    ORPHANED = "orphaned"  #: its manifest is gone; kept as history, nothing is sent
    #: its document fails validation (or its file cannot be parsed): its last valid intent
    #: keeps its record and state, nothing new is sent, it is not orphaned (reported only)
    INVALID = "invalid"


class OperationStatus(StrEnum):
    """What an attempt's operation came to: the API's statuses plus the controller's own."""

    SUBMITTING = "submitting"  #: recorded before the POST (write-ahead)
    PENDING = "pending"  #: the API: accepted, running
    SUCCEEDED = "succeeded"  #: the API: done
    FAILED = "failed"  #: the API: done, with an error object
    TIMED_OUT = "timed_out"  #: not terminal within the manifest's timeout
    LOST = "lost"  #: accepted, then not visible on the server past the not-found tolerance


#: recorded states whose operation is not finished: submitting or pending
IN_FLIGHT: frozenset[IntentState] = frozenset({IntentState.SUBMITTING, IntentState.PENDING})
#: states the store holds (the others are only reported)
RECORDED: frozenset[IntentState] = frozenset({
    IntentState.SUBMITTING, IntentState.PENDING, IntentState.IN_SYNC, IntentState.FAILED,
    IntentState.STALLED, IntentState.LOST,
})
#: recorded states that nothing changes without a human (or a new spec)
TERMINAL: frozenset[IntentState] = frozenset({
    IntentState.IN_SYNC, IntentState.STALLED, IntentState.LOST,
})
#: reported states that make ``run --once`` exit 1 and alerts fire
SETTLED_BAD: frozenset[IntentState] = frozenset({
    IntentState.FAILED, IntentState.STALLED, IntentState.LOST,
})
