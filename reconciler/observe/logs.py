"""Structured logging: JSON lines for machines, readable lines on a terminal.

One place configures structlog for the whole process. Every rendered line goes through the
one scrubber (:mod:`reconciler.model.scrub`): the secrets registered with it (those given
to :func:`configure` are registered too) and bearer-looking values are replaced, whatever
field they hide in, as a last line of defence behind code that never logs them in the
first place.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, TextIO

import structlog

from reconciler.model import scrub as scrubber

__all__ = ["REDACTED", "LogFormat", "configure", "redact"]

LogFormat = Literal["auto", "json", "console"]
REDACTED = scrubber.REDACTED


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` scrubbed (:func:`reconciler.model.scrub.text`) of ``secrets`` too."""
    return scrubber.text(text, secrets)


class _Scrub:
    """A structlog processor that scrubs every value of an event (nested ones too)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = tuple(s for s in secrets if s and len(s) >= scrubber.MIN_SECRET)

    def __call__(self, _logger: Any, _name: str,
                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in list(event.items()):
            if isinstance(value, str | dict | list | tuple):
                event[key] = scrubber.value(value, self.secrets)
            elif not isinstance(value, int | float | bool | type(None)):
                event[key] = scrubber.text(repr(value), self.secrets)
        return event


def configure(
    *,
    level: str = "info",
    fmt: LogFormat = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog (and stdlib logging, for uvicorn) for the process."""
    out = stream or sys.stdout
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r} (debug, info, warning, error)")
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (structlog.processors.JSONRenderer(sort_keys=False) if as_json
                     else structlog.dev.ConsoleRenderer(colors=out.isatty()))
    secrets = tuple(secrets)
    scrubber.register(*secrets)
    scrub = _Scrub(secrets)
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries (uvicorn, asyncio, httpx) log through stdlib logging: render their records
    # with the same renderer and scrubber, so stdout stays JSON lines and secret-free.
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           stamp],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, scrub, renderer],
    ))
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler], force=True)
