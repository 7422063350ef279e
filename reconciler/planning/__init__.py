"""The planner: pure decisions of what to do for every manifest (see :mod:`.planner`)."""

from reconciler.planning.actions import CHANGE_KINDS, Action, ActionKind, Plan, View
from reconciler.planning.capacity import Limits
from reconciler.planning.planner import plan
from reconciler.planning.policy import (
    attempts_allowed,
    backoff,
    deadline,
    failures,
    in_backoff,
    next_attempt_at,
    past_deadline,
    retries_left,
    retry_budget_spent,
    retry_past_deadline,
)
from reconciler.planning.windows import Desired, desired_intent

__all__ = [
    "CHANGE_KINDS",
    "Action",
    "ActionKind",
    "Desired",
    "Limits",
    "Plan",
    "View",
    "attempts_allowed",
    "backoff",
    "deadline",
    "desired_intent",
    "failures",
    "in_backoff",
    "next_attempt_at",
    "past_deadline",
    "plan",
    "retries_left",
    "retry_budget_spent",
    "retry_past_deadline",
]
