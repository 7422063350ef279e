"""The in-flight limits, and the capacity one planning pass hands out under them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from reconciler.model.records import IntentRecord

__all__ = ["Capacity", "Limits"]


@dataclass(frozen=True)
class Limits:
    """Concurrency bounds on operations in flight (submitting or pending)."""

    max_in_flight: int = 16
    max_per_service: int = 4


@dataclass
class Capacity:
    """Operations in flight, in all and per service, counted as a plan starts new ones.

    Starts from the records already in flight (orphans included: they still run) and
    grows by one for every start :meth:`try_take` allows.
    """

    limits: Limits
    load: int = 0
    per_service: Counter[str] = field(default_factory=Counter)

    @classmethod
    def taken_by(cls, records: Iterable[IntentRecord], limits: Limits) -> Capacity:
        """The capacity left by ``records`` (those in flight count)."""
        in_flight = [r for r in records if r.in_flight]
        return cls(limits, len(in_flight), Counter(r.service for r in in_flight))

    def has_room(self, service: str) -> bool:
        """Whether both limits allow one more on ``service`` (``load <`` max in flight and
        the service's count ``<`` max per service)."""
        return (self.load < self.limits.max_in_flight
                and self.per_service[service] < self.limits.max_per_service)

    def try_take(self, service: str) -> bool:
        """Take one slot on ``service`` if :meth:`has_room`; False, and nothing taken,
        if not."""
        if not self.has_room(service):
            return False
        self.take(service)
        return True

    def take(self, service: str) -> None:
        """Count one more in flight on ``service`` (whatever the limits say)."""
        self.load += 1
        self.per_service[service] += 1

    def free(self, service: str) -> None:
        """One fewer in flight on ``service``."""
        self.load = max(0, self.load - 1)
        self.per_service[service] = max(0, self.per_service[service] - 1)

    def describe(self, service: str) -> str:
        """Why a start on ``service`` must wait: the counts and limits."""
        return (f"{self.load} operations in flight (limit {self.limits.max_in_flight}), "
                f"{self.per_service[service]} on {service} "
                f"(limit {self.limits.max_per_service})")
