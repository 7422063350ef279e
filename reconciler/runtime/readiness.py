"""The daemon's liveness (``/healthz``) and readiness (``/readyz``) rules.

Alive: the reconcile loop came round recently. Ready: the manifests were loaded once and the
AI Lake API answers (checked with one bounded request, the answer kept for a while so that
probes every few seconds cost nothing). Neither is tied to leadership.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from reconciler.ailake.client import AiLakeClient
from reconciler.errors import ApiError

__all__ = ["API_CHECK_TTL", "READY_TIMEOUT", "ApiProbe", "liveness"]

#: seconds /readyz may spend checking the API (the chart's probe times out after 3 s)
READY_TIMEOUT = 2.5
#: seconds an API check's answer is reused
API_CHECK_TTL = 30.0


def liveness(age: float, *, interval: float, grace_period: float) -> tuple[bool, str]:
    """Alive unless the loop was silent for ``age`` seconds, over three passes' worth."""
    stuck_after = 3 * max(interval, grace_period, 10.0)
    if age > stuck_after:
        return False, f"reconcile loop silent for {age:.0f}s (limit {stuck_after:.0f}s)"
    return True, f"loop alive ({age:.0f}s since last pass)"


class ApiProbe:
    """Whether the AI Lake API is usable, asked at most once per :data:`API_CHECK_TTL`."""

    def __init__(self, *, ttl: float = API_CHECK_TTL, timeout: float = READY_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self.clock = clock
        self._last: tuple[float, bool, str] | None = None

    async def check(self, client: AiLakeClient) -> tuple[bool, str]:
        """(usable, why): the cached answer, or a fresh one when it is too old."""
        last = self._last
        if last is None or self.clock() - last[0] > self.ttl:
            ok, why = await self._ask(client)
            last = self._last = (self.clock(), ok, why)
        return last[1], last[2]

    async def _ask(self, client: AiLakeClient) -> tuple[bool, str]:
        try:
            # One page (page_size=1 paged through every service, one request each) and
            # bounded below the probe's timeout: a failing API makes the daemon unready
            # instead of hanging /readyz through the client's retries.
            await asyncio.wait_for(client.list_services(page_size=500), self.timeout)
        except TimeoutError:
            return False, f"AI Lake API did not answer within {self.timeout:g}s"
        except ApiError as exc:
            return False, f"AI Lake API not usable: {exc}"
        return True, "manifests loaded, API reachable"
