"""The AI Lake API: the client the engine calls, and what it answers.

``client`` sends and retries, ``failures`` turns failed requests into the classified
exceptions of :mod:`reconciler.errors`, ``responses`` parses answers, ``ratelimit`` holds
the token bucket; ``emulator`` is a local stand-in for the API (imported on its own).
"""

from __future__ import annotations

from reconciler.ailake.client import AiLakeClient, ClientSettings, RequestRecord
from reconciler.ailake.ratelimit import TokenBucket
from reconciler.ailake.responses import Operation, OperationFailure, RunAccepted, ServiceInfo

__all__ = [
    "AiLakeClient",
    "ClientSettings",
    "Operation",
    "OperationFailure",
    "RequestRecord",
    "RunAccepted",
    "ServiceInfo",
    "TokenBucket",
]
