"""ailake-reconciler: a GitOps controller for GoodData Cloud AI Lake service commands.

The public facade: load manifests, plan, execute with the engine against the API client,
persist in the store. Everything else lives in the pipeline's packages (docs/architecture.md).
"""

from __future__ import annotations

from reconciler.ailake.client import AiLakeClient, ClientSettings
from reconciler.errors import (
    ApiError,
    ConfigError,
    CredentialsError,
    OutcomeUnknownError,
    PermanentError,
    ReconcilerError,
    StoreError,
    TemporaryError,
    classify,
)
from reconciler.execution.engine import Engine, EngineSettings
from reconciler.model.lifecycle import IntentState, transition
from reconciler.model.manifest import LoadResult, ServiceCommand
from reconciler.planning import Plan, plan
from reconciler.source import load_manifests
from reconciler.store import Store
from reconciler.version import __version__

__all__ = [
    "AiLakeClient",
    "ApiError",
    "ClientSettings",
    "ConfigError",
    "CredentialsError",
    "Engine",
    "EngineSettings",
    "IntentState",
    "LoadResult",
    "OutcomeUnknownError",
    "PermanentError",
    "Plan",
    "ReconcilerError",
    "ServiceCommand",
    "Store",
    "StoreError",
    "TemporaryError",
    "__version__",
    "classify",
    "load_manifests",
    "plan",
    "transition",
]
