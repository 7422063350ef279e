"""The client-wide rate limiters: a fixed token bucket, and one that adapts (AIMD).

Both are reservation style and never hold a lock: a caller takes its token at once (the
balance may go negative) and then sleeps until that token would have been refilled, so
concurrent callers queue up at ``1/rate`` spacing and each sleeps exactly once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

__all__ = ["AIMD_DEFAULT_CEILING", "AIMD_DEFAULT_START", "AdaptiveLimiter", "TokenBucket"]

#: where an adaptive limiter starts when no rate is configured (requests per second)
AIMD_DEFAULT_START = 50.0
#: the most an adaptive limiter goes up to when no rate is configured
AIMD_DEFAULT_CEILING = 1000.0


class TokenBucket:
    """Client-wide rate limiter: ``rate`` requests per second, burst ``max(1, rate)``."""

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
        #: no request leaves before this (monotonic; a server's Retry-After)
        self._paused_until = 0.0

    @property
    def current_rate(self) -> float:
        """Requests per second allowed now (for the ``api_rate_limit`` gauge)."""
        return self.rate

    def reserve(self) -> float:
        """Take one token; return how long the caller must wait before using it."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0
        wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
        return max(wait, self._paused_until - now)

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await self._sleep(wait)

    def observe(self, *, status: int | None, latency: float, retry_after: float | None = None,
                remaining: int | None = None, limit: int | None = None) -> None:
        """One answer (``status`` None: no answer came). A fixed bucket keeps its rate
        whatever it hears (the caller that got a 429 waits its ``Retry-After`` itself)."""

    def _pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))


class AdaptiveLimiter(TokenBucket):
    """A token bucket whose rate adapts to the API (increase, multiplicative decrease):
    per fast answer, while the server's ``X-RateLimit-Remaining`` is not low, up to
    ``ceiling``, +``increase`` requests/s or ``growth`` of the rate if more (so a fast API
    is reached in a few hundred answers, not thousands); halved on a 429 (and no request
    leaves before its ``Retry-After``); cut by a quarter when answers get slow (over
    ``slow`` seconds) or nothing answers. Decreases happen at most once per ``cooldown``
    seconds (a burst of 429s to requests already sent halves the rate once), and never
    below ``floor``."""

    def __init__(
        self,
        start: float = AIMD_DEFAULT_START,
        *,
        ceiling: float = AIMD_DEFAULT_CEILING,
        floor: float = 1.0,
        increase: float = 1.0,
        growth: float = 0.02,
        fast: float = 0.5,
        slow: float = 2.0,
        cooldown: float = 1.0,
        sleep: Callable[[float], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        if not 0 < floor <= ceiling:
            raise ValueError("an adaptive rate needs 0 < floor <= ceiling")
        super().__init__(min(max(start, floor), ceiling), sleep=sleep, clock=clock)
        self.ceiling = ceiling
        self.floor = floor
        self.increase = increase
        self.growth = growth
        self.fast = fast
        self.slow = slow
        self.cooldown = cooldown
        self._decreased_at = float("-inf")
        #: 429s seen, decreases made (for logs and tests)
        self.throttled = 0
        self.decreases = 0

    def _set_rate(self, rate: float) -> None:
        # settle the tokens earned at the old rate first, so a change applies from now
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self.rate = min(self.ceiling, max(self.floor, rate))
        self.burst = max(1.0, self.rate)
        self._tokens = min(self._tokens, self.burst)

    def _decrease(self, factor: float) -> None:
        now = self._clock()
        if now - self._decreased_at < self.cooldown:
            return
        self._decreased_at = now
        self.decreases += 1
        self._set_rate(self.rate * factor)

    def observe(self, *, status: int | None, latency: float, retry_after: float | None = None,
                remaining: int | None = None, limit: int | None = None) -> None:
        if status == 429:
            self.throttled += 1
            if retry_after is not None:
                self._pause(retry_after)
            self._decrease(0.5)
            return
        if status is None or latency > self.slow:
            self._decrease(0.75)
            return
        if remaining is not None and _low(remaining, limit):
            return  # close to the server's budget: hold the rate
        if latency <= self.fast and status < 500:
            self._set_rate(self.rate + max(self.increase, self.rate * self.growth))


def _low(remaining: int, limit: int | None) -> bool:
    """Whether the server's remaining budget is low: under 10 % of its limit (or under 10
    requests when it does not say its limit)."""
    if limit is not None and limit > 0:
        return remaining < 0.1 * limit
    return remaining < 10
