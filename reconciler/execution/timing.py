"""Delays of the protocol: polls that know the duration, the settle window, the not-found
tolerance.

Polls: the first look at an accepted operation comes when that service's command has
ended in all but a few runs (a time tracked from what first looks found:
:class:`Durations`), then looks follow at a small fraction of the operation's age, so the
lag from its end to the record stays a few percent of its duration at a handful of GETs.
A command with no history starts at ``poll_initial`` and doubles.

Recorded times are wall-clock (they must survive a restart); a delay measured within this
process must also have passed on the monotonic clock, so a wall clock that jumps forward
never ends a settle window or a not-found tolerance early.
"""

from __future__ import annotations

import math
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
#: the first look at an operation with only a history to go by (the store's, after a
#: restart) comes this fraction after the upper quartile of its command's durations
TYPICAL_MARGIN = 0.02
#: the quantile of the history that first look waits for
LIKELY_END = 0.75
#: the share of first looks that may find the operation still running: the first-look
#: time is tracked to that quantile of the command's durations (fewer means later looks)
EARLY_LOOKS = 0.05
#: the step of that tracking, as a fraction of the first-look time
TRACK_STEP = 0.05
#: once an operation is past its first look, looks come every this fraction of its age
#: (the lag bound, as a share of the duration)
LATE_POLL_FRACTION = 0.05
#: the shortest wait between two looks once an operation is past its first look (seconds)
LATE_POLL_MIN = 0.02


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
    """How long each service's command takes: its recent successes (learned from the
    store's history at start and from every success since), and when to look first.

    The first-look time is tracked, not averaged: a success found at the first look
    moves it earlier by a little, one found still running moves it later by more
    (:data:`EARLY_LOOKS`, :data:`TRACK_STEP`), so it settles where few first looks are
    early, and a look never pushes it up run after run (a success found late says only
    "done by then")."""

    def __init__(self, history: Iterable[tuple[str, str, float]] = ()) -> None:
        self._samples: dict[tuple[str, str], deque[float]] = {}
        #: seconds after acceptance of the first look, per (service, command)
        self._first: dict[tuple[str, str], float] = {}
        for service, command, seconds in history:  # newest first
            samples = self._samples.setdefault((service, command),
                                               deque(maxlen=DURATION_SAMPLES))
            if len(samples) < DURATION_SAMPLES:
                samples.appendleft(seconds)

    def add(self, service: str, command: str, seconds: float) -> None:
        self._samples.setdefault((service, command),
                                 deque(maxlen=DURATION_SAMPLES)).append(seconds)

    def typical(self, service: str, command: str) -> float | None:
        """The median of the command's recent successes on ``service``; with none there,
        of the same command on the other services (None: it never ran)."""
        samples = self._kept(service, command)
        return statistics.median(samples) if samples else None

    def first_look(self, service: str, command: str) -> float | None:
        """Seconds after acceptance to look first: the tracked time, else (a history only)
        just after the upper quartile of the recent durations (None: it never ran)."""
        tracked = self._first.get((service, command))
        if tracked is not None:
            return tracked
        samples = sorted(self._kept(service, command))
        if not samples:
            return None
        quartile = samples[min(len(samples) - 1, math.ceil(LIKELY_END * len(samples)) - 1)]
        return quartile * (1 + TYPICAL_MARGIN)

    def _kept(self, service: str, command: str) -> list[float]:
        samples = self._samples.get((service, command))
        if samples:
            return list(samples)
        return [x for (_, c), kept in self._samples.items() if c == command for x in kept]

    def learn(self, service: str, command: str, seconds: float, *,
              not_before: float | None) -> None:
        """A success seen ``seconds`` after acceptance; ``not_before``: its age at the last
        look that found it still running (None: the first look found it done). It ended
        in between: the middle is its duration."""
        key = (service, command)
        if not_before is not None:
            seconds = (max(0.0, min(not_before, seconds)) + seconds) / 2
        tracked = self._first.get(key)
        if tracked is None:
            self._first[key] = seconds
        elif not_before is None:  # done at the first look: a little earlier next time
            self._first[key] = tracked * (1 - TRACK_STEP * EARLY_LOOKS)
        else:  # still running at the first look: later, at least to where it ended
            self._first[key] = max(tracked * (1 + TRACK_STEP * (1 - EARLY_LOOKS)), seconds)
        self.add(service, command, seconds)


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
        first = self.durations.first_look(rec.service, rec.command)
        started = rec.accepted_at or rec.attempt_started_at or now
        age = max(0.0, (now - started).total_seconds())
        s = self.settings
        if first is None:  # never ran: capped exponential backoff
            return now + self.poll_delay(polls)
        if polls == 0:  # accepted now: the server started it moments ago
            wait = max(s.poll_initial, first)
        elif age < first:  # a look before the first-look time (a lookup, a retry)
            wait = max(s.poll_initial, first - age)
        else:
            wait = max(min(s.poll_initial, LATE_POLL_MIN), LATE_POLL_FRACTION * age)
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
