"""What ``reconciler run`` is configured with, and how its secrets are read.

:class:`DaemonSettings` nests the API client's, the engine's and the git follower's own
settings instead of repeating their fields: the CLI builds each of them once, from the flags.
Secrets (the API token in :attr:`ClientSettings.token`, the webhook secret here, the git
token in a file) never show in ``repr``.
"""

from __future__ import annotations

import base64
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.ailake.client import ClientSettings
from reconciler.errors import ConfigError
from reconciler.execution.engine import EngineSettings
from reconciler.source.git import GitSettings

__all__ = ["DaemonSettings", "GitSettings", "git_secrets", "read_secret"]


@dataclass(frozen=True)
class DaemonSettings:
    """Everything ``reconciler run`` is configured with. Secrets never show in repr.

    The manifests come from exactly one of :attr:`manifests` (a directory or file: plain,
    a git checkout, a git-sync link, a ConfigMap mount) and :attr:`git` (the built-in git
    follower, ``--git-url``)."""

    manifests: Path | None
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
    #: the built-in git follower (``--git-url``); None: ``manifests`` is read
    git: GitSettings | None = None
    #: accept a source with no manifests where the last good one had some (orphan them all)
    allow_empty: bool = False
    #: serve the read-only web view on the listener (``GET /``); off: ``/`` answers 404
    ui: bool = True

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret configured (for the log scrubber): the API token, the webhook
        secret, and the git token with the Basic credentials made of it."""
        found = [s for s in (self.client.token, self.webhook_secret) if s]
        found += [s for s in git_secrets(self.git) if s not in found]
        return tuple(found)


def git_secrets(git: GitSettings | None) -> tuple[str, ...]:
    """The git token (read from ``--git-token-file`` now) and ``base64(USER:TOKEN)``, the
    credential git sends; empty without a token file or when it cannot be read yet (the
    follower then reports the failure on its first fetch)."""
    if git is None or git.token_file is None:
        return ()
    token = ""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        token = Path(git.token_file).read_text(encoding="utf-8").strip()
    if not token:
        return ()
    return token, base64.b64encode(f"{git.token_user}:{token}".encode()).decode()


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
