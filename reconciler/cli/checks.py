"""One line of ``reconciler check``: :class:`Check`, the titles in the order shown, and
the hints the checks share (the checks themselves: :mod:`reconciler.cli.check_api`,
:mod:`~reconciler.cli.check_store`, :mod:`~reconciler.cli.check_source` and
:mod:`~reconciler.cli.check_listen`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "HINT_NO_CREDENTIAL",
    "HINT_STORE",
    "HINT_URL",
    "TITLES",
    "Check",
    "Status",
    "failing",
    "passing",
    "skipping",
    "uid",
]

Status = Literal["pass", "fail", "skip"]

#: every check, in the order shown, with its title
TITLES: Mapping[str, str] = {
    "api": "API URL",
    "token": "API token",
    "services": "services",
    "commands": "commands",
    "ready": "service readiness",
    "store": "state store",
    "source": "manifest source",
    "manifests": "manifests",
    "listen": "listener",
}

HINT_URL = ("check --api-url (RECONCILER_API_URL): it is the organisation's URL, e.g. "
            "https://example.cloud.gooddata.com")
HINT_NO_CREDENTIAL = ("set RECONCILER_API_TOKEN, or --token-file FILE (RECONCILER_TOKEN_FILE; "
                      "the chart's token.existingSecret)")
HINT_STORE = ("give --state (RECONCILER_STATE) a path on a writable volume (the chart "
              "mounts one at /data), or fix the directory's owner and mode (the image "
              "runs as uid 10001)")


@dataclass(frozen=True)
class Check:
    """One line of ``reconciler check``."""

    #: a key of :data:`TITLES`
    name: str
    status: Status
    message: str
    #: what to do about a failure
    hint: str = ""
    #: the HTTP status the API answered with, if that is what failed
    http_status: int | None = None
    #: the configuration is certainly wrong (not a passing outage): ``run --once`` stops
    fatal: bool = False

    @property
    def title(self) -> str:
        return TITLES[self.name]

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def line(self) -> str:
        """``<title>: <message>; <hint>``: a failure as one log or error line."""
        return f"{self.title}: {self.message}" + (f"; {self.hint}" if self.hint else "")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "status": self.status,
                "message": self.message, "hint": self.hint or None,
                "httpStatus": self.http_status}


def passing(name: str, message: str) -> Check:
    return Check(name, "pass", message)


def skipping(name: str, message: str) -> Check:
    return Check(name, "skip", message)


def failing(name: str, message: str, hint: str = "", *, http_status: int | None = None,
          fatal: bool = False) -> Check:
    return Check(name, "fail", message, hint, http_status, fatal)



def uid() -> str:
    """Who this process is, for a message about permissions."""
    return f"uid {os.geteuid()}" if hasattr(os, "geteuid") else "this user"
