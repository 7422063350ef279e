"""Delays of the protocol: polls that know the duration, the settle window, the not-found
tolerance.

Polls: the first look at an accepted operation comes when that service's command typically
ends (the median of its recent successes), then looks follow at a small fraction of the
operation's age, so the lag from its end to the record stays a few percent of its duration
at a handful of GETs. A command with no history starts at ``poll_initial`` and doubles.

Recorded times are wall-clock (they must survive a restart); a delay measured within this
process must also have passed on the monotonic clock, so a wall clock that jumps forward
never ends a settle window or a not-found tolerance early.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from reconciler.model.records import IntentRecord

__all__ = ["Durations", "Timers", "TimingSettings"]

#: successes remembered per (service, command) for the typical duration
DURATION_SAMPLES = 20
#: the first look at an operation comes this fraction after its command's typical
#: duration (half the runs end later than the median: a look right at it finds most of
#: them still running, and the next comes only :data:`LATE_POLL_FRACTION` of the age later)
TYPICAL_MARGIN = 0.02
#: once an operation is as old as its command's typical duration, looks come every this
#: fraction of its age (the lag bound, as a share of the duration)
LATE_POLL_FRACTION = 0.05


@dataclass(frozen=True)
class TimingSettings:
    """How long the protocol waits for what (seconds)."""

    #: first poll delay; doubles per poll up to ``poll_max``
    poll_initial: float = 1.0
    poll_max: float = 30.0
    #: +- fraction of random jitter on poll delays
    jitter: float = 0.2
    #: after a run POST whose answer never came, how long a lookup's 404 is not yet proof
    #: that it never arrived (gateways may queue a request for minutes)
    settle: float = 600.0
    #: how long an accepted operation may answer 404 before it is recorded as lost
    not_found_tolerance: float = 600.0


class Durations:
    """How long each service's command typically takes: the median of its recent
    successes, learned from the store's history at start and from every success since."""

    def __init__(self, history: Iterable[tuple[str, str, float]] = ()) -> None:
        self._samples: dict[tuple[str, str], deque[float]] = {}
        for service, command, seconds in history:  # newest first
            samples = self._samples.setdefault((service, command),
                                               deque(maxlen=DURATION_SAMPLES))
            if len(samples) < DURATION_SAMPLES:
                samples.appendleft(seconds)

    def add(self, service: str, command: str, seconds: float) -> None:
        self._samples.setdefault((service, command),
                                 deque(maxlen=DURATION_SAMPLES)).append(seconds)

    def typical(self, service: str, command: str) -> float | None:
        samples = self._samples.get((service, command))
        return statistics.median(samples) if samples else None


class Timers:
    """The protocol's clocks: the wall clock it records, the monotonic one it measures."""

    def __init__(self, settings: TimingSettings, clock: Callable[[], datetime],
                 rng: random.Random, monotonic: Callable[[], float] = time.monotonic,
                 durations: Durations | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.rng = rng
        self.monotonic = monotonic
        self.durations = durations or Durations()
        self._sent: dict[tuple[str, int], float] = {}
        self._missing: dict[tuple[str, int], float] = {}

    def poll_delay(self, polls: int) -> timedelta:
        """Capped exponential backoff with jitter for the ``polls``-th look."""
        s = self.settings
        base = min(s.poll_max, s.poll_initial * (2 ** min(polls, 16)))
        return timedelta(seconds=base * (1 + self.rng.uniform(-s.jitter, s.jitter)))

    def next_poll(self, rec: IntentRecord, polls: int) -> datetime:
        """When to look next at the accepted operation of ``rec`` (``polls`` looks so
        far): at the command's typical end, then every few percent of its age."""
        now = self.clock()
        typical = self.durations.typical(rec.service, rec.command)
        started = rec.attempt_started_at or now
        age = max(0.0, (now - started).total_seconds())
        if typical is None:
            return now + self.poll_delay(polls)
        s = self.settings
        if age < typical:  # before the typical end: look just after it
            wait = max(s.poll_initial, typical * (1 + TYPICAL_MARGIN) - age)
        else:
            wait = max(s.poll_initial, LATE_POLL_FRACTION * age)
        return now + timedelta(seconds=wait)

    # ------------------------------------------------------------------ the settle window

    def sent(self, rec: IntentRecord) -> None:
        """The run POST of ``rec``'s current attempt is going out now."""
        self._sent[(rec.spec_hash, rec.current_attempt)] = self.monotonic()

    def settled_at(self, rec: IntentRecord) -> datetime | None:
        """When a 404 proves the current attempt's POST never arrived (None: now, it
        certainly was not sent). Both clocks must agree that the window has passed."""
        sent_at = rec.attempt_started_at
        if sent_at is None:
            return None
        window = self.settings.settle
        wall = sent_at + timedelta(seconds=window)
        sent_mono = self._sent.get((rec.spec_hash, rec.current_attempt))
        if sent_mono is not None:
            left = sent_mono + window - self.monotonic()
            wall = max(wall, self.clock() + timedelta(seconds=max(0.0, left)))
        return wall if wall > self.clock() else None

    # ------------------------------------------------------------------ not found

    def missing_until(self, rec: IntentRecord) -> datetime | None:
        """When an accepted operation that answers 404 becomes lost (None: it is now)."""
        key = (rec.spec_hash, rec.current_attempt)
        now = self.clock()
        first_mono = self._missing.setdefault(key, self.monotonic())
        since = rec.missing_since or now
        window = self.settings.not_found_tolerance
        wall = since + timedelta(seconds=window)
        left = first_mono + window - self.monotonic()
        wall = max(wall, now + timedelta(seconds=max(0.0, left)))
        return wall if wall > now else None

    def found(self, rec: IntentRecord) -> None:
        """The operation of ``rec`` is visible again."""
        self._missing.pop((rec.spec_hash, rec.current_attempt), None)
