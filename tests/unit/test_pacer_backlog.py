"""The pacer's backlog: latency a live stream cannot lose by itself is drained, or cut when it is larger than
DRAIN_MAX_FRAMES; replies faster than real time are never touched."""

from __future__ import annotations

import asyncio
import itertools
import time

from avr_runtime.audio.buffer import PlayoutBuffer
from avr_runtime.audio.pacer import DRAIN_MAX_FRAMES, TRIM_AFTER_TICKS, Pacer

PERIOD = 0.02


def frame(i: int) -> bytes:
    return bytes([1 + i % 250]) * 320


class Run:
    def __init__(self) -> None:
        self.buf = PlayoutBuffer(320, capacity=1000)
        self.sent: list[bytes] = []
        self.dropped: list[int] = []
        self.pacer = Pacer(
            self.buf, lambda f, _w: self.sent.append(f), bytes(320), period=PERIOD, on_drop=self.dropped.append
        )

    def push(self, data: bytes) -> None:
        was_empty = len(self.buf) == 0
        self.buf.push(data, asyncio.get_running_loop().time())
        self.pacer.audio_arrived(was_empty)


async def stall_then_real_time(run: Run, stalled: int) -> int:
    """``stalled`` frames queued at once (a stall), then audio arriving in real time for two trim periods."""
    run.pacer.start()
    for i in range(stalled):
        run.push(frame(i))
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = stalled + 2 * TRIM_AFTER_TICKS
    for i in range(stalled, total):
        await asyncio.sleep(max(0.0, start + (i - stalled) * PERIOD - loop.time()))
        run.push(frame(i))
    await asyncio.sleep(0.1)
    run.pacer.stop()
    return total


async def test_a_steady_backlog_behind_a_stall_is_drained_without_dropping_anything() -> None:
    run = Run()
    total = await stall_then_real_time(run, 8)
    assert not run.dropped
    assert len(run.buf) <= 2, "what is left queued is at most the arrival jitter"
    assert [f for f in run.sent if any(f)] == [frame(i) for i in range(total - len(run.buf))], "in order, all of it"


async def test_a_steady_backlog_too_large_to_drain_is_cut() -> None:
    run = Run()
    stalled = DRAIN_MAX_FRAMES + 6
    await stall_then_real_time(run, stalled)
    assert run.dropped, "the backlog was never trimmed"
    assert stalled - 3 <= sum(run.dropped) <= stalled + 1, "about the stall's frames, not more"
    assert len(run.buf) <= 2, "what is left queued is at most the arrival jitter"


async def test_a_reply_faster_than_real_time_is_never_cut() -> None:
    run = Run()
    run.pacer.start()
    reply = b"".join(frame(i) for i in range(120))  # 2.4 s of speech arriving at once, as TTS streams it
    run.push(reply)
    await asyncio.sleep(120 * PERIOD + 0.3)
    run.pacer.stop()
    assert run.dropped == []
    played = [f for f in run.sent if any(f)]
    assert played == [frame(i) for i in range(120)]


async def test_a_reply_streamed_slightly_faster_than_real_time_is_never_cut() -> None:
    run = Run()
    run.pacer.start()
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 90
    for i in range(n):  # 25 % faster than real time: the backlog grows steadily
        await asyncio.sleep(max(0.0, start + i * PERIOD * 0.75 - loop.time()))
        run.push(frame(i))
    await asyncio.sleep(n * PERIOD * 0.3 + 0.3)
    run.pacer.stop()
    assert run.dropped == []
    assert [f for f in run.sent if any(f)] == [frame(i) for i in range(n)]


async def test_one_late_frame_is_drained_by_slewing_without_dropping_anything() -> None:
    """A live stream whose frames arrive in real time, one period behind after a late frame: the pacer catches up
    by sending 2 ms early for a while, every frame is played, and the wait returns to the margin."""
    loop = asyncio.get_running_loop()
    waits: list[float] = []
    times: list[float] = []
    buf = PlayoutBuffer(320, capacity=1000)
    sent: list[bytes] = []

    def send(f: bytes, waited: float | None) -> None:
        sent.append(f)
        times.append(loop.time())
        if waited is not None:
            waits.append(waited)

    dropped: list[int] = []
    pacer = Pacer(buf, send, bytes(320), period=PERIOD, on_drop=dropped.append)
    pacer.start()
    start = loop.time() + 0.05
    n = 80
    for i in range(n):  # frame 0 comes with frame 1 (it was late): the stream runs one frame behind from then on
        if i == 0:
            continue
        await asyncio.sleep(max(0.0, start + i * PERIOD - loop.time()))
        was_empty = len(buf) == 0
        buf.push(frame(i - 1) + frame(i) if i == 1 else frame(i), loop.time())
        pacer.audio_arrived(was_empty)
    await asyncio.sleep(0.1)
    pacer.stop()
    assert dropped == []
    assert [f for f in sent if any(f)] == [frame(i) for i in range(n)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= PERIOD - pacer.max_slew - 0.001
    assert max(waits[-20:]) < 0.012, "still a period behind at the end"
    assert max(waits[:5]) > 0.015, "the late frame did make the stream wait"


async def live_stream(late: float = 0.0, stall: float = 0.0) -> dict[bytes, float]:
    """40 frames arriving in real time, 7 ms before their slots once the pacer has locked on; frame 15 arrives
    ``late`` seconds later than that, or the event loop blocks for ``stall`` seconds 2 ms after frame 15's slot.
    Returns when each frame was played (all of them, in order, nothing dropped)."""
    loop = asyncio.get_running_loop()
    run = Run()
    played: list[tuple[bytes, float]] = []
    run.pacer._send = lambda f, _w: played.append((f, loop.time()))
    run.pacer.start()
    start = loop.time() + 0.05
    n = 40
    for i in range(n):
        loop.call_at(start + i * PERIOD + 0.007 + (late if i == 15 else 0.0), run.push, frame(i))
    if stall:
        loop.call_at(start + 15 * PERIOD + 0.009, time.sleep, stall)
    await asyncio.sleep(n * PERIOD + 0.2)
    run.pacer.stop()
    assert not run.dropped
    assert [f for f, _ in played if any(f)] == [frame(i) for i in range(n)], "every frame played, in order"
    return {f: t for f, t in played if any(f)}


async def test_a_backlog_left_by_a_stall_of_the_loop_is_drained_from_the_next_slot() -> None:
    """The event loop blocked for 50 ms: the frames that arrived meanwhile are a backlog the stall made, so the
    pacer drains it from the next slot (each one ``max_slew`` early) instead of first waiting three slots to see
    that it is steady."""
    played = await live_stream(stall=0.05)
    # without the rule, 16 -> 17 -> 18 take two whole periods before the draining starts
    assert played[frame(18)] - played[frame(16)] < 2 * PERIOD - 0.005, "the backlog had to prove itself first"


async def test_a_backlog_behind_a_silence_frame_for_late_audio_is_drained_from_the_next_slot() -> None:
    """Frame 15 arrives 16 ms late, past the margin and the grace (4 ms each): its slot played silence, so the stream
    is a frame behind from then on, and the pacer starts catching up at once."""
    played = await live_stream(late=0.016)
    # without the rule, 15 -> 16 -> 17 take two whole periods before the draining starts
    assert played[frame(17)] - played[frame(15)] < 2 * PERIOD - 0.005, "the backlog had to prove itself first"
