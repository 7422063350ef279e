"""Identity of an intent: canonical JSON, spec hash and deterministic operation ids.

Everything here is computable offline from a manifest alone, so two replicas, a
restarted daemon or a daemon with an empty state store all derive the same ids and the
server's operation records can be found again (DESIGN section 3).

Changing anything in this module re-runs every command of every user: golden tests in
``tests/test_identity.py`` pin concrete ids and must fail loudly on any change.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = [
    "OPERATION_NAMESPACE",
    "canonical_intent",
    "canonical_json",
    "operation_id",
    "spec_hash",
]

#: Fixed uuid5 namespace of operation ids. Never change it.
OPERATION_NAMESPACE = uuid.UUID("8a0e5f4c-3b7d-5c1e-9f2a-6d4b3c2a1e0f")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace; non-ASCII kept as is (UTF-8 when hashed)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def canonical_intent(
    *,
    name: str,
    service: Mapping[str, str],
    command: str,
    payload: Mapping[str, Any] | None,
    context: Mapping[str, str | None] | None,
    rerun: str,
    window: str,
) -> str:
    """The canonical text of one intent; ``service`` is ``{"service": id}`` or
    ``{"serviceName": name}``, exactly as the manifest wrote it."""
    return canonical_json(
        {
            "name": name,
            **service,
            "command": command,
            "payload": payload,
            "context": context,
            "rerun": rerun,
            "window": window,
        }
    )


def spec_hash(canonical: str) -> str:
    """sha256 hex digest of a canonical intent."""
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def operation_id(spec_hash_hex: str, attempt: int) -> str:
    """The operation id of ``attempt`` (0-based) of the intent with this spec hash."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    return str(uuid.uuid5(OPERATION_NAMESPACE, f"{spec_hash_hex}/{attempt}"))
