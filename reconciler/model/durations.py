"""Go-style durations (``90s``, ``10m``, ``1h30m``, ``1.5s``, ``250ms``), as manifests write them.

Kept separate and dependency-free so the manifest schema, the CLI flags and the emulator
config all accept exactly the same spellings.
"""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["DURATION_PATTERN", "format_duration", "parse_duration"]

#: The JSON Schema ``pattern`` for a duration string (also used by the parser).
DURATION_PATTERN = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$"

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration; raise ``ValueError`` naming the bad text otherwise."""
    if not isinstance(text, str) or not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(
            f"invalid duration {text!r}: use a number with a unit, e.g. 90s, 10m, 1h30m"
        )
    if text == "0":
        return timedelta(0)
    seconds = sum(float(num) * _UNIT_SECONDS[unit] for num, unit in _PART.findall(text))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta | float) -> str:
    """Render a duration compactly (``1h30m``, ``45s``, ``1.5s``) for plans and tables."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    frac = seconds - whole
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{hours}h"
    if minutes:
        out += f"{minutes}m"
    if secs or frac or not out:
        out += f"{secs + frac:.3g}s" if frac else f"{secs}s"
    return out
