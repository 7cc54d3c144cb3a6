"""Admission control: a per-client moving-window rate limit and a cap on concurrent calls."""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerSecond, storage, strategies


class RateLimiter:
    """``limit`` hits per ``window`` seconds per key (a client address), counted over a moving window."""

    def __init__(self, limit: int, window: int) -> None:
        self._item = RateLimitItemPerSecond(limit, window)
        self._strategy = strategies.MovingWindowRateLimiter(storage.MemoryStorage())

    def hit(self, key: str) -> float | None:
        """Record a hit; None when allowed, else the seconds until the client may retry."""
        if self._strategy.hit(self._item, key):
            return None
        stats = self._strategy.get_window_stats(self._item, key)
        return max(0.0, stats.reset_time - time.time())

    @staticmethod
    def retry_after_header(seconds: float) -> str:
        return str(max(1, math.ceil(seconds)))


class CallSlots:
    """Refuse (never queue) calls beyond the cap: a queued phone call is dead air."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.active = 0

    def try_acquire(self) -> bool:
        if self.active >= self.capacity:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active = max(0, self.active - 1)

    @property
    def full(self) -> bool:
        return self.active >= self.capacity
