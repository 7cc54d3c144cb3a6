"""The outbound pacer on a real event loop: steady 20 ms slots, silence when idle, no bursts, phase lock."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from avr_runtime.audio.buffer import PlayoutBuffer
from avr_runtime.audio.pacer import Pacer

PERIOD = 0.02
SILENCE = bytes(320)
TOL = 0.001  # timer granularity; the loop never fires a timer early by more than this


@dataclass
class Sent:
    t: float
    frame: bytes
    wait: float | None


@dataclass
class Recorder:
    loop: asyncio.AbstractEventLoop
    sent: list[Sent] = field(default_factory=list)

    def __call__(self, frame: bytes, wait: float | None) -> None:
        self.sent.append(Sent(self.loop.time(), frame, wait))

    def gaps(self) -> list[float]:
        return [b.t - a.t for a, b in zip(self.sent, self.sent[1:], strict=False)]

    def audio(self) -> list[Sent]:
        return [s for s in self.sent if s.wait is not None]


def frame(i: int) -> bytes:
    return bytes([1 + i % 250]) * 320


def make(
    margin: float = 0.004, max_slew: float = 0.002, grace: float | None = None
) -> tuple[Pacer, Recorder, PlayoutBuffer]:
    loop = asyncio.get_running_loop()
    rec = Recorder(loop)
    buf = PlayoutBuffer(320, capacity=500)
    pacer = Pacer(buf, rec, SILENCE, period=PERIOD, margin=margin, grace=grace, max_slew=max_slew)
    return pacer, rec, buf


def push(pacer: Pacer, buf: PlayoutBuffer, data: bytes) -> None:
    was_empty = len(buf) == 0
    buf.push(data, asyncio.get_running_loop().time())
    pacer.audio_arrived(was_empty)


def assert_min_spacing(rec: Recorder, pacer: Pacer) -> None:
    gaps = rec.gaps()
    assert gaps, "nothing was sent"
    assert min(gaps) >= pacer.period - pacer.max_slew - TOL, f"two sends {min(gaps) * 1000:.2f} ms apart"


async def test_idle_cadence_sends_silence_every_period() -> None:
    pacer, rec, _ = make()
    pacer.start()
    await asyncio.sleep(0.6)
    pacer.stop()
    assert all(s.frame == SILENCE and s.wait is None for s in rec.sent)
    assert 20 <= len(rec.sent) <= 32
    gaps = rec.gaps()
    assert_min_spacing(rec, pacer)
    assert 0.018 <= statistics.median(gaps) <= 0.022
    in_range = sum(0.018 <= g <= 0.022 for g in gaps)
    assert in_range >= 0.7 * len(gaps)
    # no drift: the grid is kept, so the average period is the period
    span = rec.sent[-1].t - rec.sent[0].t
    assert span / len(gaps) >= PERIOD - TOL


async def test_burst_comes_out_one_per_slot() -> None:
    pacer, rec, buf = make()
    pacer.start()
    await asyncio.sleep(0.05)
    push(pacer, buf, b"".join(frame(i) for i in range(50)))
    await asyncio.sleep(1.25)
    pacer.stop()
    audio = rec.audio()
    assert [s.frame for s in audio] == [frame(i) for i in range(50)]
    assert len(buf) == 0
    assert_min_spacing(rec, pacer)
    # one per slot: 50 frames take about 49 periods, not less
    assert audio[-1].t - audio[0].t >= 49 * (PERIOD - pacer.max_slew) - TOL
    # no silence in the middle of the burst
    first = rec.sent.index(audio[0])
    assert all(s.wait is not None for s in rec.sent[first : first + 50])
    # waits grow by about a period per frame: frame i waited at least i slots
    for i, s in enumerate(audio):
        assert s.wait is not None
        assert s.wait >= i * (PERIOD - pacer.max_slew) - TOL


async def test_stream_at_a_fixed_phase_converges_to_margin() -> None:
    pacer, rec, buf = make(margin=0.004, max_slew=0.002)
    loop = asyncio.get_running_loop()
    pacer.start()
    t0 = loop.time()
    count = 60
    # the provider delivers one frame every period, 11 ms after the pacer's slots: a 9 ms wait at first
    for i in range(count):
        loop.call_at(t0 + 0.2 + 0.011 + i * PERIOD, push, pacer, buf, frame(i))
    await asyncio.sleep(0.2 + count * PERIOD + 0.1)
    pacer.stop()
    audio = rec.audio()
    assert [s.frame for s in audio] == [frame(i) for i in range(count)]
    assert_min_spacing(rec, pacer)
    waits = [s.wait for s in audio if s.wait is not None]
    settled = statistics.median(waits[20:])
    # the first frame waits ~7 ms (9 ms less one 2 ms slew): clearly longer than once the slots have moved
    assert waits[0] > settled + 0.002
    assert abs(settled - pacer.margin) <= 0.002, f"settled wait {settled * 1000:.1f} ms"


async def test_stream_in_half_frames_never_bursts() -> None:
    # a provider sending 10 ms chunks: each frame arrives in two pushes into an empty queue
    pacer, rec, buf = make()
    loop = asyncio.get_running_loop()
    pacer.start()
    t0 = loop.time()
    for i in range(80):
        loop.call_at(t0 + 0.1 + 0.013 + i * PERIOD / 2, push, pacer, buf, frame(i // 2)[:160])
    await asyncio.sleep(0.1 + 40 * PERIOD + 0.1)
    pacer.stop()
    assert [s.frame for s in rec.audio()] == [frame(i) for i in range(40)]
    assert_min_spacing(rec, pacer)


async def after_frame_0(
    pacer: Pacer, rec: Recorder, buf: PlayoutBuffer, then: Callable[[float], object]
) -> tuple[int, float]:
    """Play frame 0 and call ``then`` with the time it was sent. Returns the index of frame 0 in ``rec.sent`` and
    that time."""
    sent_at: list[float] = []

    def on_send(frame_: bytes, wait: float | None) -> None:
        Recorder.__call__(rec, frame_, wait)
        if frame_ == frame(0):
            sent_at.append(asyncio.get_running_loop().time())
            then(sent_at[0])

    pacer._send = on_send
    pacer.start()
    await asyncio.sleep(0.05)
    push(pacer, buf, frame(0))
    await asyncio.sleep(0.2)
    pacer.stop()
    return [s.frame for s in rec.sent].index(frame(0)), sent_at[0]


async def second_frame_late(pacer: Pacer, rec: Recorder, buf: PlayoutBuffer, late: float) -> tuple[int, float]:
    """Play frame 0, then push frame 1 ``late`` seconds after its slot (one period after frame 0 was sent)."""
    loop = asyncio.get_running_loop()
    return await after_frame_0(pacer, rec, buf, lambda t0: loop.call_at(t0 + PERIOD + late, push, pacer, buf, frame(1)))


async def test_grace_plays_slightly_late_audio_instead_of_silence() -> None:
    margin = 0.012
    pacer, rec, buf = make(margin=margin, max_slew=0.002)
    i, _ = await second_frame_late(pacer, rec, buf, 0.003)  # 3 ms late for its slot: within the margin
    frames = [s.frame for s in rec.sent]
    assert frames[i + 1] == frame(1), "late audio was replaced by silence"
    late = rec.sent[i + 1]
    assert late.wait is not None and late.wait < margin  # sent as soon as it arrived
    assert late.t - rec.sent[i].t >= PERIOD - TOL
    assert_min_spacing(rec, pacer)


@pytest.mark.parametrize(("grace", "played"), [(None, False), (0.012, True)])
async def test_a_grace_longer_than_the_margin_plays_later_audio_instead_of_silence(
    grace: float | None, played: bool
) -> None:
    """Audio 8 ms late for its slot: past the 4 ms margin, which is also the grace by default (silence, then the
    frame a period later); within a 12 ms grace (PLAYOUT_GRACE_MS), played as it arrives."""
    pacer, rec, buf = make(margin=0.004, max_slew=0.005, grace=grace)
    i, first_sent = await second_frame_late(pacer, rec, buf, 0.008)
    frames = [s.frame for s in rec.sent]
    if played:
        assert frames[i + 1] == frame(1), "late audio was replaced by silence"
        assert rec.sent[i + 1].t - first_sent == pytest.approx(PERIOD + 0.008, abs=0.003)
    else:
        assert frames[i + 1 : i + 3] == [SILENCE, frame(1)]
    assert_min_spacing(rec, pacer)


async def test_a_stall_of_the_loop_itself_does_not_use_up_the_grace() -> None:
    """The loop stalls from 10 ms after frame 0 to 12 ms past frame 1's slot (more than the 8 ms grace), and frame 1
    arrives 2 ms after that: the grace counts from when the pacer could look, so frame 1 is played as it arrives
    instead of after a silence frame and a period."""
    pacer, rec, buf = make(margin=0.004, max_slew=0.005, grace=0.008)
    loop = asyncio.get_running_loop()

    def stall_then_frame_1(t0: float) -> None:
        loop.call_at(t0 + 0.010, time.sleep, 0.022)  # a blocking stall over frame 1's slot
        loop.call_at(t0 + 0.034, push, pacer, buf, frame(1))

    i, _ = await after_frame_0(pacer, rec, buf, stall_then_frame_1)
    frames = [s.frame for s in rec.sent]
    assert frames[i + 1 : i + 3] == [frame(1), SILENCE], "the stall was charged to the provider as silence"
    assert rec.sent[i + 1].t - rec.sent[i].t == pytest.approx(0.034, abs=0.006), "played as it arrived"
    assert_min_spacing(rec, pacer)


@pytest.mark.parametrize("grace", [None, 0.008])
async def test_grace_expires_into_silence_and_keeps_spacing(grace: float | None) -> None:
    pacer, rec, buf = make(margin=0.004, max_slew=0.005, grace=grace)
    pacer.start()
    await asyncio.sleep(0.05)
    push(pacer, buf, frame(0) + frame(1))
    await asyncio.sleep(0.3)
    pacer.stop()
    frames = [s.frame for s in rec.sent]
    i = frames.index(frame(1))
    assert frames[i - 1] == frame(0)
    assert all(f == SILENCE for f in frames[i + 1 :])
    assert len(frames) - i - 1 >= 8
    # the first silence after speech waited for the grace period
    assert rec.sent[i + 1].t - rec.sent[i].t >= PERIOD + pacer.grace - TOL
    assert_min_spacing(rec, pacer)


async def test_stop_stops() -> None:
    pacer, rec, buf = make()
    pacer.start()
    running_before = pacer.running
    await asyncio.sleep(0.1)
    pacer.stop()
    assert running_before
    assert not pacer.running
    n = len(rec.sent)
    assert n >= 3
    push(pacer, buf, frame(0))  # audio after stop is not played
    await asyncio.sleep(0.1)
    assert len(rec.sent) == n
    pacer.stop()  # idempotent
    assert not pacer.running


async def test_the_tail_of_a_reply_is_played_without_waiting_for_more_audio() -> None:
    pacer, rec, buf = make()
    pacer.start()
    await asyncio.sleep(0.05)
    push(pacer, buf, frame(7) + frame(8)[:100])  # one frame and a third
    await asyncio.sleep(0.15)
    pacer.stop()
    audio = rec.audio()
    assert [s.frame for s in audio] == [frame(7), frame(8)[:100] + bytes(220)]
    assert not buf.has_partial
    assert_min_spacing(rec, pacer)


async def test_a_short_last_frame_is_played_when_the_grace_ends_not_a_slot_later() -> None:
    """Asterisk's last frame of a playback is 12 bytes, and so is its echo: it arrives into an empty queue 3 ms
    before its slot, as a part of a frame. It is played padded with silence when the slot's grace ends, where a
    silence frame was played before, and the frame after it (a period later) is silence."""
    pacer, rec, buf = make(margin=0.004, max_slew=0.005, grace=0.008)
    loop = asyncio.get_running_loop()
    tail = frame(1)[:12]
    i, first_sent = await after_frame_0(
        pacer, rec, buf, lambda t0: loop.call_at(t0 + PERIOD - 0.003, push, pacer, buf, tail)
    )
    frames = [s.frame for s in rec.sent]
    assert frames[i + 1 : i + 3] == [tail + bytes(308), SILENCE], "the tail waited a slot behind a silence frame"
    assert rec.sent[i + 1].t - first_sent == pytest.approx(PERIOD + pacer.grace, abs=0.003)
    assert not buf.has_partial
    assert_min_spacing(rec, pacer)


async def test_part_of_a_frame_in_the_grace_waits_for_the_rest_of_it() -> None:
    """Half of frame 1 arrives 2 ms after its slot (in the grace), the other half 3 ms later: the whole frame is
    played when it is complete, not a silence frame at the first half and the frame a period later."""
    pacer, rec, buf = make(margin=0.004, max_slew=0.005, grace=0.008)
    loop = asyncio.get_running_loop()
    one = frame(1)

    def halves(t0: float) -> None:
        loop.call_at(t0 + PERIOD + 0.002, push, pacer, buf, one[:160])
        loop.call_at(t0 + PERIOD + 0.005, push, pacer, buf, one[160:])

    i, first_sent = await after_frame_0(pacer, rec, buf, halves)
    frames = [s.frame for s in rec.sent]
    assert frames[i + 1 : i + 3] == [one, SILENCE]
    assert rec.sent[i + 1].t - first_sent == pytest.approx(PERIOD + 0.005, abs=0.003)
    assert_min_spacing(rec, pacer)
