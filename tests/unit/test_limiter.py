"""Admission control: per-client moving-window rate limit and the concurrent call cap."""

from __future__ import annotations

import time

import pytest

from avr_runtime.services.limiter import CallSlots, RateLimiter


def test_allows_limit_then_refuses() -> None:
    rl = RateLimiter(limit=5, window=60)
    assert [rl.hit("10.0.0.1") for _ in range(5)] == [None] * 5
    retry = rl.hit("10.0.0.1")
    assert retry is not None
    assert 0 < retry <= 60


def test_keys_are_independent() -> None:
    rl = RateLimiter(limit=2, window=60)
    assert rl.hit("a") is None
    assert rl.hit("a") is None
    assert rl.hit("a") is not None
    assert rl.hit("b") is None
    assert rl.hit("b") is None
    assert rl.hit("b") is not None


def test_window_moves_on() -> None:
    rl = RateLimiter(limit=2, window=1)
    assert rl.hit("k") is None
    assert rl.hit("k") is None
    retry = rl.hit("k")
    assert retry is not None and 0 < retry <= 1
    time.sleep(1.1)
    assert rl.hit("k") is None


@pytest.mark.parametrize(("seconds", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")])
def test_retry_after_header(seconds: float, header: str) -> None:
    assert RateLimiter.retry_after_header(seconds) == header


def test_call_slots() -> None:
    slots = CallSlots(2)
    states = [slots.full]
    assert slots.try_acquire()
    assert slots.try_acquire()
    states.append(slots.full)
    assert not slots.try_acquire()
    assert slots.active == 2
    slots.release()
    states.append(slots.full)
    assert slots.try_acquire()
    for _ in range(5):
        slots.release()
    assert slots.active == 0
    assert slots.try_acquire()
    assert states == [False, True, False]
