"""The shared pacer clock on a real event loop: never early, at most a millisecond late, one loop timer per ms."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from avr_runtime.audio.buffer import PlayoutBuffer
from avr_runtime.audio.clock import SlotClock
from avr_runtime.audio.pacer import Pacer

TOL = 0.001  # the loop's own timer granularity


async def test_slots_fire_in_their_millisecond_and_never_early() -> None:
    loop = asyncio.get_running_loop()
    clock = SlotClock(loop)
    rng = random.Random(3)
    now = loop.time()
    due = [now + rng.uniform(0.005, 0.06) for _ in range(300)]
    fired: dict[int, float] = {}
    for i, when in enumerate(due):
        clock.call_at(when, lambda i=i: fired.__setitem__(i, loop.time()))  # type: ignore[misc]
    # slots are coalesced: at most one loop timer per millisecond of the span
    assert len(clock._buckets) <= 56
    # the loop's own lateness, from a plain timer per slot: a stalled machine makes both late, not the clock
    reference: dict[int, float] = {}
    for i, when in enumerate(due):
        loop.call_at(when, lambda i=i: reference.__setitem__(i, loop.time()))  # type: ignore[misc]
    await asyncio.sleep(0.1)
    assert len(fired) == 300 and clock.pending == 0
    for i, when in enumerate(due):
        assert fired[i] >= when - TOL, "fired early"
        assert fired[i] <= max(reference[i], when) + clock.resolution + 0.01, "late beyond its millisecond"


async def test_cancelled_slots_do_not_fire_and_a_failing_one_does_not_stop_the_rest() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        clock = SlotClock(loop)
        when = loop.time() + 0.01
        ran: list[str] = []

        def boom() -> None:
            raise RuntimeError("boom")

        clock.call_at(when, lambda: ran.append("a"))
        clock.call_at(when, boom)
        cancelled = clock.call_at(when, lambda: ran.append("cancelled"))
        clock.call_at(when, lambda: ran.append("b"))
        cancelled.cancel()
        await asyncio.sleep(0.03)
        assert ran == ["a", "b"]
        assert len(errors) == 1 and isinstance(errors[0]["exception"], RuntimeError)
    finally:
        loop.set_exception_handler(None)


def test_resolution_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        SlotClock(asyncio.new_event_loop(), 0)


class CountingClock(SlotClock):
    __slots__ = ("fires",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.fires = 0

    def _fire(self, key: int) -> None:
        self.fires += 1
        super()._fire(key)


async def test_many_pacers_on_one_clock_keep_the_20ms_cadence() -> None:
    loop = asyncio.get_running_loop()
    clock = CountingClock(loop)
    sends: dict[int, list[float]] = {i: [] for i in range(50)}
    pacers = []
    for i in range(50):
        buf = PlayoutBuffer(320, 10)
        pacer = Pacer(buf, lambda _f, _w, i=i: sends[i].append(loop.time()), bytes(320), clock=clock)  # type: ignore[misc]
        pacers.append(pacer)
        pacer.start()
        await asyncio.sleep(0.0004)  # spread their phases
    await asyncio.sleep(0.5)
    for pacer in pacers:
        pacer.stop()
    for times in sends.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(gaps) >= 20
        closest = pacers[0].period - pacers[0].max_slew  # a late slot may be followed by one max_slew early
        assert min(gaps) >= closest - TOL, f"two frames closer than {closest * 1000:.0f} ms"
        assert sum(gaps) / len(gaps) == pytest.approx(0.02, abs=0.0015)  # the grid is kept, no drift
    # timers are shared: far fewer loop timers than frames
    frames = sum(len(times) for times in sends.values())
    assert clock.fires * 2 < frames, (clock.fires, frames)
