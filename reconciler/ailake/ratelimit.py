"""The client-wide rate limiter: a token bucket that never holds a lock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """Client-wide rate limiter: ``rate`` requests per second, burst ``max(1, rate)``.

    Reservation style: a caller takes its token at once (the balance may go negative) and
    then sleeps until that token would have been refilled, so concurrent callers queue up
    at ``1/rate`` spacing without a lock and each sleeps exactly once.
    """

    def __init__(
        self,
        rate: float,
        *,
        sleep: Callable[[float], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self._sleep = sleep
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def reserve(self) -> float:
        """Take one token; return how long the caller must wait before using it."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await self._sleep(wait)
