"""The outbound pacer wired to a real event loop: it starts on the loop's clock (its own timers, or a shared
SlotClock), plays what is pushed in order, sends silence when idle, and stops. Its rules and their timing are
checked on a virtual clock, against the same scripts as the compiled pacer (tests/unit/test_pacer_spec.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from avr_runtime.audio.buffer import PlayoutBuffer
from avr_runtime.audio.clock import SlotClock
from avr_runtime.audio.pacer import Pacer

PERIOD = 0.02
SILENCE = bytes(320)


def frame(i: int) -> bytes:
    return bytes([1 + i % 250]) * 320


async def until(check: Callable[[], bool], within: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.mark.parametrize("shared_clock", [False, True], ids=["loop timers", "slot clock"])
async def test_pushed_audio_is_played_in_order_then_silence(shared_clock: bool) -> None:
    loop = asyncio.get_running_loop()
    sent: list[tuple[bytes, float | None]] = []
    buf = PlayoutBuffer(320, capacity=50)
    clock = SlotClock(loop) if shared_clock else None
    pacer = Pacer(buf, lambda f, w: sent.append((f, w)), SILENCE, period=PERIOD, clock=clock)
    pacer.start()
    assert await until(lambda: len(sent) >= 2), "silence while idle"
    assert all(f == SILENCE and w is None for f, w in sent)
    was_empty = len(buf) == 0
    buf.push(frame(0) + frame(1) + frame(2)[:100], loop.time())
    pacer.audio_arrived(was_empty)
    assert await until(lambda: sum(f != SILENCE for f, _ in sent) == 3), "the tail is played too"
    assert await until(lambda: sent[-1][0] == SILENCE)
    pacer.stop()
    played = [(f, w) for f, w in sent if f != SILENCE]
    assert [f for f, _ in played] == [frame(0), frame(1), frame(2)[:100] + bytes(220)]
    assert all(w is not None and w >= 0 for _, w in played), "each with how long it waited"


async def test_stop_stops() -> None:
    loop = asyncio.get_running_loop()
    sent: list[bytes] = []
    buf = PlayoutBuffer(320, capacity=50)
    pacer = Pacer(buf, lambda f, _w: sent.append(f), SILENCE, period=PERIOD)
    assert pacer.snapshot() is None, "not started"
    pacer.start()
    assert pacer.running
    assert await until(lambda: len(sent) >= 3)
    pacer.stop()
    assert pacer.snapshot() is None
    n = len(sent)
    buf.push(frame(0), loop.time())
    pacer.audio_arrived(True)  # audio after stop is not played
    await asyncio.sleep(0.1)
    assert len(sent) == n
    pacer.stop()  # idempotent
    assert not pacer.running


def test_a_pacer_not_started_has_no_clock() -> None:
    pacer = Pacer(PlayoutBuffer(320, capacity=5), lambda f, w: None, SILENCE)
    pacer.audio_arrived(True)  # nothing to do before start: no clock is read
    assert not pacer.running
