"""One exception hierarchy for everything the reconciler raises.

``ReconcilerError`` is the root. API failures are classified once, at the client, into
the three classes that decide what the engine does next (DESIGN section 1):

- ``PermanentError`` (terminal): a 4xx other than 408/409/429. Retrying the same request
  cannot help: the manifest is wrong, the service is missing, the token lacks rights.
- ``TemporaryError`` (transient): 408, 429, 5xx, timeouts, dropped connections. Retried
  with backoff; ``delay`` carries the server's ``Retry-After`` when it gave one.
- ``OutcomeUnknownError``: a run POST whose answer never arrived. The command may or may
  not have started; the engine resolves it with ``GET /operations/{id}``, never a blind
  re-POST.

Messages never contain the API token or the webhook secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ApiError",
    "ConfigError",
    "ManifestError",
    "OutcomeUnknownError",
    "PermanentError",
    "Problem",
    "ReconcilerError",
    "StoreError",
    "TemporaryError",
]


class ReconcilerError(Exception):
    """Base class of every error raised by this package."""


class ConfigError(ReconcilerError):
    """A flag, environment variable or configuration file is invalid."""


@dataclass(frozen=True, order=True)
class Problem:
    """One problem found in a manifest source, located by file and line (1-based)."""

    file: str
    line: int
    name: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.name}: {self.message}"


class ManifestError(ReconcilerError):
    """One or more manifests are invalid; ``problems`` lists every one of them."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class StoreError(ReconcilerError):
    """The state store cannot be opened, migrated or written."""


class ApiError(ReconcilerError):
    """An AI Lake API call failed; carries what the server said (problem+json)."""

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        endpoint: str = "",
        status: int | None = None,
        title: str | None = None,
        detail: str | None = None,
        trace_id: str | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.endpoint = endpoint
        self.status = status
        self.title = title
        self.detail = detail
        self.trace_id = trace_id
        self.body = body


class PermanentError(ApiError):
    """Terminal: retrying the same request cannot succeed (4xx except 408/409/429)."""


class TemporaryError(ApiError):
    """Transient: retry later; ``delay`` is the server's Retry-After in seconds, if any."""

    def __init__(self, message: str, *, delay: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.delay = delay


class OutcomeUnknownError(ApiError):
    """A run POST got no answer: the operation may exist; look it up before re-POSTing."""

    def __init__(self, message: str, *, operation_id: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.operation_id = operation_id
