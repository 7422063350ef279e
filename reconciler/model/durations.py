"""Go-style durations (``90s``, ``10m``, ``1h30m``, ``1.5s``, ``250ms``), as manifests write them.

The one Go-style duration grammar of the package: the manifest schema (``DURATION_PATTERN``),
the CLI flags and the emulator config all parse with it. Kept dependency-free.
"""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["DURATION_PATTERN", "duration_seconds", "format_duration", "parse_duration"]

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_UNITS = "|".join(_UNIT_SECONDS)
#: A number as manifests write it: digits on both sides of a decimal point (``1``, ``1.5``).
_NUMBER = r"[0-9]+(\.[0-9]+)?"
#: Go's own spelling also allows digits on one side only (``.5``, ``5.``).
_GO_NUMBER = r"([0-9]+(\.[0-9]*)?|\.[0-9]+)"

#: The JSON Schema ``pattern`` for a duration string (also used by the parser).
DURATION_PATTERN = rf"^(0|({_NUMBER}({_UNITS}))+)$"
_GO_PATTERN = rf"^(0|({_GO_NUMBER}({_UNITS}))+)$"
_PART = re.compile(rf"([0-9]*\.?[0-9]*)({_UNITS})")


def duration_seconds(text: str, *, go_numbers: bool = False) -> float:
    """The seconds a Go-style duration stands for, as a float (so it never overflows).

    Accepts exactly :data:`DURATION_PATTERN`; ``go_numbers`` also admits Go's ``.5s`` and
    ``5.s`` (the emulator's config does). Raises ``ValueError`` naming the bad text.
    """
    pattern = _GO_PATTERN if go_numbers else DURATION_PATTERN
    if not isinstance(text, str) or not re.fullmatch(pattern, text):
        raise ValueError(
            f"invalid duration {text!r}: use a number with a unit, e.g. 90s, 10m, 1h30m"
        )
    if text == "0":
        return 0.0
    return sum(float(num) * _UNIT_SECONDS[unit] for num, unit in _PART.findall(text))


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration; raise ``ValueError`` naming the bad text otherwise."""
    return timedelta(seconds=duration_seconds(text))


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
