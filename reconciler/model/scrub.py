"""The one scrubber: secrets out of every string that came from outside.

Whatever the AI Lake API answers (problem details, a failed operation's ``error.detail``,
results), whatever ``httpx`` or git say, and every message made of them, goes through
:func:`text` (a string) or :func:`value` (nested JSON) before it is stored, logged,
exported or served. Two things are replaced by :data:`REDACTED`:

- **secrets known to the process**: registered once at start-up with :func:`register`
  (the daemon and the CLI do it from their settings: the API token, the webhook secret,
  the git credentials, the database password), plus any passed to :func:`text` itself;
  also their JSON-escaped and percent-encoded spellings. Secrets shorter than
  :data:`MIN_SECRET` characters are not replaced (they would mangle ordinary text).
- **bearer-looking values**, whoever they belong to: the value of an ``Authorization``
  header (``Authorization: Bearer x``, ``"authorization": "Basic x"``), ``Bearer <token>``,
  the password of a URL's user info (``https://user:pw@host``), JSON Web Tokens, and the
  well-known token formats of GitHub (``ghp_…``, ``github_pat_…``) and GitLab (``glpat-…``).

Pure apart from the registry (a process-wide set, written at start-up): no I/O, no clock.
Scrubbing is idempotent: scrubbing a scrubbed text changes nothing.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

__all__ = ["MIN_SECRET", "REDACTED", "clear", "register", "registered", "text", "value"]

REDACTED = "[REDACTED]"
#: secrets shorter than this are not replaced
MIN_SECRET = 4

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
#: every spelling of every registered secret, longest first
_spellings: tuple[str, ...] = ()

_CREDENTIAL = r"[A-Za-z0-9\-._~+/]+=*"
# The value of an Authorization header, in a header dump, a log line or JSON: the scheme
# (when there is one) is kept, the credential goes, up to a quote, a bracket, a comma or
# the end of the line.
_SCHEMES = r"(?:bearer|basic|token|digest|negotiate)"
_AUTH_HEADER = re.compile(
    r"(?i)(\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"
    r"(?!(?:" + _SCHEMES + r"\s+)?\[REDACTED\])"
    r"(?:(" + _SCHEMES + r")\s+)?"
    r"[^\s\"',;)\]}]+(?:\s*=+)?")
# "Bearer x" as a header writes it: any value; "bearer x" in prose: only a value with a
# digit or a symbol in it (no English word)
_BEARER = re.compile(r"\b(Bearer|BEARER)\s+(?!\[REDACTED\])" + _CREDENTIAL)
_BEARER_PROSE = re.compile(r"(?i)\b(bearer)\s+(?!\[REDACTED\])"
                           r"(?=[A-Za-z]*[0-9\-._~+/=])" + _CREDENTIAL)
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/@\s:]*:)(?!\[REDACTED\])[^/@\s]+@")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]*")
_KNOWN_TOKENS = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_\-]{20,})")
# cheap test whether any pattern above can match at all
_HINT = re.compile(r"(?i)authori|bearer|://|eyJ|gh[pousr]_|github_pat_|glpat-")


def _spell(secret: str) -> set[str]:
    """A secret and the ways it is written inside JSON text and URLs."""
    forms = {secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote(secret)}
    return {f for f in forms if len(f) >= MIN_SECRET}


def register(*secrets: str | None) -> None:
    """Add secrets known to this process (None and short ones are ignored)."""
    global _secrets, _spellings
    new = {s for s in secrets if s and len(s) >= MIN_SECRET}
    with _lock:
        if new <= _secrets:
            return
        _secrets = _secrets | new
        spellings = set().union(*(_spell(s) for s in _secrets))
        _spellings = tuple(sorted(spellings, key=len, reverse=True))


def registered() -> frozenset[str]:
    """The secrets registered so far."""
    return _secrets


def clear() -> None:
    """Forget every registered secret (tests)."""
    global _secrets, _spellings
    with _lock:
        _secrets, _spellings = frozenset(), ()


def text(value: str, secrets: Iterable[str | None] = ()) -> str:
    """``value`` with every registered secret, every one of ``secrets`` and every
    bearer-looking value replaced by :data:`REDACTED`."""
    extra = [s for s in secrets if s and len(s) >= MIN_SECRET and s not in _secrets]
    spellings = _spellings
    if extra:
        spellings = tuple(sorted(set(spellings).union(*(_spell(s) for s in extra)),
                                 key=len, reverse=True))
    for secret in spellings:
        if secret in value:
            value = value.replace(secret, REDACTED)
    if _HINT.search(value) is None:
        return value
    value = _AUTH_HEADER.sub(
        lambda m: m.group(1) + (m.group(2) + " " if m.group(2) else "") + REDACTED, value)
    value = _BEARER.sub(lambda m: m.group(1) + " " + REDACTED, value)
    value = _BEARER_PROSE.sub(lambda m: m.group(1) + " " + REDACTED, value)
    value = _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", value)
    value = _JWT.sub(REDACTED, value)
    return _KNOWN_TOKENS.sub(REDACTED, value)


def value(obj: Any, secrets: Iterable[str | None] = ()) -> Any:
    """``obj`` (JSON-like: mappings, lists, strings, numbers) with :func:`text` applied
    to every string in it, keys included; a new object, ``obj`` is not changed. Mappings
    come back as dicts, tuples as lists; other values as they are."""
    extra = tuple(secrets)
    if isinstance(obj, str):
        return text(obj, extra)
    if isinstance(obj, Mapping):
        return {text(k, extra) if isinstance(k, str) else k: value(v, extra)
                for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [value(v, extra) for v in obj]
    return obj
