"""What both leader electors (the Lease, the PostgreSQL advisory lock) share: the flag that
says this replica leads, an event to wait for it, and ``on_change`` told of every flip."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

__all__ = ["Leadership"]

log = structlog.get_logger("reconciler.runtime.leader")


class Leadership:
    """The leader flag of an elector; the elector logs a flip between :meth:`_flip` and
    :meth:`_tell`, so its line comes before whatever ``on_change`` does."""

    on_change: Callable[[bool], None] | None

    def __init__(self, on_change: Callable[[bool], None] | None) -> None:
        self.on_change = on_change
        self._leader = False
        self._became = asyncio.Event()

    def _flip(self, leader: bool) -> bool:
        """Set the flag; False when it already was ``leader`` (nothing to tell)."""
        if leader == self._leader:
            return False
        self._leader = leader
        if leader:
            self._became.set()
        else:
            self._became.clear()
        return True

    def _tell(self, leader: bool) -> None:
        """Call ``on_change``; an exception in it is logged, never raised into the loop."""
        if self.on_change is not None:
            try:
                self.on_change(leader)
            except Exception:
                log.exception("leader_on_change_failed", leader=leader)
