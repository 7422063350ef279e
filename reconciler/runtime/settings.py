"""What ``reconciler run`` is configured with, and how its secrets are read.

:class:`DaemonSettings` nests the API client's and the engine's own settings instead of
repeating their fields: the CLI builds each of them once, from the flags. Secrets (the API
token in :attr:`ClientSettings.token`, the webhook secret here) never show in ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reconciler.ailake.client import ClientSettings
from reconciler.errors import ConfigError
from reconciler.execution.engine import EngineSettings

__all__ = ["DaemonSettings", "read_secret"]


@dataclass(frozen=True)
class DaemonSettings:
    """Everything ``reconciler run`` is configured with. Secrets never show in repr."""

    manifests: Path
    #: the AI Lake API: URL, token, CA, rate limit, request timeout and retries
    client: ClientSettings
    #: execution bounds (in-flight limits) and polling cadence
    engine: EngineSettings = field(default_factory=EngineSettings)
    state: str = "./reconciler-state.db"
    interval: float = 60.0
    listen: str | None = "0.0.0.0:8080"
    once: bool = False
    webhook_secret: str | None = field(default=None, repr=False)
    grace_period: float = 25.0
    retention: int = 50
    watch_period: float = 2.0

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret configured (for the log scrubber)."""
        return tuple(s for s in (self.client.token, self.webhook_secret) if s)


def read_secret(value: str | None, file: str | None, what: str) -> str | None:
    """A secret from a file (a mounted Secret; surrounding whitespace dropped) or a value."""
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the {what} file {file}: {exc.strerror}") from exc
        if not text:
            raise ConfigError(f"the {what} file {file} is empty")
        return text
    return value or None
