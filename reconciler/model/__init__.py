"""Frozen types and pure rules, no I/O: manifests, identity, durations, recorded intents."""

from __future__ import annotations

from reconciler.model.durations import format_duration, parse_duration
from reconciler.model.identity import canonical_intent, canonical_json, operation_id, spec_hash
from reconciler.model.manifest import (
    Interval,
    LoadResult,
    Once,
    Policy,
    RetryPolicy,
    Schedule,
    ServiceCommand,
    ServiceRef,
)
from reconciler.model.records import IntentRecord, NewIntent, OperationRecord

__all__ = [
    "IntentRecord",
    "Interval",
    "LoadResult",
    "NewIntent",
    "Once",
    "OperationRecord",
    "Policy",
    "RetryPolicy",
    "Schedule",
    "ServiceCommand",
    "ServiceRef",
    "canonical_intent",
    "canonical_json",
    "format_duration",
    "operation_id",
    "parse_duration",
    "spec_hash",
]
