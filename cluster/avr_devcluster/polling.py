"""Waiting for eventual consistency: controllers act asynchronously, so tests poll for the outcome."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], *, timeout: float = 60, interval: float = 0.5, what: str = "") -> T:
    """Call `check` until it returns something truthy, and return that; raise TimeoutError after `timeout`.

    Exceptions from `check` propagate: a check that may fail transiently should catch them itself.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            name = what or getattr(check, "__name__", "a condition")
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {name} (last result: {result!r})")
        time.sleep(interval)
