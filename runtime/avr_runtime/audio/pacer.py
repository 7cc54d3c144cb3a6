"""The outbound clock: one frame every 20 ms on the event loop's monotonic clock, silence when idle.

Asterisk plays what it receives as it arrives, so bursts overflow it and gaps click. The pacer never sends two
frames closer than ``period - max_slew`` apart and never skips a slot; within those bounds it phase-locks to the
provider so streamed audio waits about ``margin`` in the worker instead of up to a whole period:

- audio arriving into an empty buffer pulls the next slot earlier (at most ``max_slew`` per frame) until it waits
  only ``margin``;
- audio that is late for its slot by up to ``grace`` (default: ``margin``) is still sent at once instead of a
  silence frame; when the loop itself fires a slot more than 5 ms late (a stall of the worker), the grace counts
  from then, so the worker's own delay is not charged to the provider as a silence frame;
- a stream that keeps a steady backlog (audio arriving in real time behind a late frame or a stall) loses it, so
  one hiccup does not add latency for the rest of the call: up to ten frames (200 ms) are drained by sending
  ``max_slew`` early (nothing is dropped) once the backlog has lasted three frames, or from the next slot when a
  hiccup of the pacer's own made it (a slot it fired late, or a silence frame it played for late audio); a larger
  one is dropped after a second; replies generated faster than real time (their backlog grows or drains) are never
  touched;
- the last part of a reply that does not fill a frame (the echo of Asterisk's last, short frame of a playback) is
  padded with silence and played when its slot's grace ends, instead of the silence frame played there before and
  a period later than that; one that has waited a period with nothing after it is played at the next slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol

from avr_runtime.audio.buffer import PlayoutBuffer


class _Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the pacer reads the time from and schedules its slots on: audio/clock.py's SlotClock in the worker, a
    virtual clock in the tests that replay the pacer's specification."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> _Cancellable: ...


LATE_AFTER: Final = 0.005
TRIM_AFTER_TICKS: Final = 50
STEADY_SPREAD: Final = 2
DRAIN_AFTER_TICKS: Final = 3
DRAIN_MAX_FRAMES: Final = 10
HICCUP_TICKS: Final = 3


class PacerState(NamedTuple):
    next_slot: float
    earliest: float
    talking: bool
    grace: bool
    draining: bool
    backlog_ticks: int
    backlog_min: int
    backlog_max: int
    hiccup: int


def _discard(frame: bytes, waited: float | None) -> None:
    """The sender of a closed pacer."""


def _not_started(when: float, callback: Callable[[], None]) -> _Cancellable:
    raise RuntimeError("the pacer is not started")


def _not_started_time() -> float:
    raise RuntimeError("the pacer is not started")


class Pacer:
    __slots__ = (
        "_backlog_max",
        "_backlog_min",
        "_backlog_ticks",
        "_call_at",
        "_clock",
        "_draining",
        "_earliest",
        "_grace",
        "_handle",
        "_hiccup",
        "_next",
        "_on_drop",
        "_on_late",
        "_send",
        "_silence",
        "_talking",
        "_time",
        "buffer",
        "grace",
        "margin",
        "max_slew",
        "period",
    )

    def __init__(
        self,
        buffer: PlayoutBuffer,
        send: Callable[[bytes, float | None], None],
        silence: bytes,
        *,
        period: float = 0.02,
        margin: float = 0.004,
        grace: float | None = None,
        max_slew: float = 0.005,
        on_late: Callable[[], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``clock`` shares timers between the calls of a worker (or is a test's virtual clock); without one each
        pacer has its own timer on the running event loop."""
        self.buffer = buffer
        self.period = period
        self.margin = margin
        self.grace = margin if grace is None else grace  # how long a slot waits for late audio before silence
        self.max_slew = max_slew
        self._send = send  # (frame, seconds the audio waited here; None for silence)
        self._silence = silence
        self._on_late = on_late
        self._on_drop = on_drop
        self._clock = clock
        self._time: Callable[[], float] = _not_started_time
        self._call_at: Callable[[float, Callable[[], None]], _Cancellable] = _not_started
        self._handle: _Cancellable | None = None
        self._next = 0.0
        self._earliest = 0.0  # the last send + period - max_slew: no slot may be earlier
        self._talking = False
        self._grace = False
        self._backlog_ticks = 0
        self._backlog_min = self._backlog_max = 0
        self._draining = False  # a small steady backlog: slots come max_slew early until it is gone
        self._hiccup = 0  # slots after a late slot of ours or a silence frame for late audio: drain at once

    def start(self) -> None:
        if self._clock is not None:
            self._time, self._call_at = self._clock.time, self._clock.call_at
        else:
            loop = asyncio.get_running_loop()
            self._time, self._call_at = loop.time, loop.call_at
        self._next = self._time()
        self._handle = self._call_at(self._next, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        """Stop for good and forget the sender, which usually refers back to the pacer's owner."""
        self.stop()
        self._send = _discard

    def snapshot(self) -> PacerState | None:
        """Everything another pacer needs to carry on this one's grid without a gap or a burst (None when
        stopped). The slot times are on the event loop's clock, which is the monotonic clock."""
        if self._handle is None:
            return None
        return PacerState(
            self._next,
            self._earliest,
            self._talking,
            self._grace,
            self._draining,
            self._backlog_ticks,
            self._backlog_min,
            self._backlog_max,
            self._hiccup,
        )

    @property
    def running(self) -> bool:
        return self._handle is not None

    def audio_arrived(self, was_empty: bool) -> None:
        """Call after pushing provider audio into the buffer."""
        if self._handle is None or not was_empty:
            return
        now = self._time()
        if self._grace:
            if not self.buffer:  # only part of a frame: wait for the rest until the grace ends (see _tick)
                return
            # late by less than the grace: play it now rather than after a silence frame
            self._handle.cancel()
            self._grace = False
            self._emit(now)
            return
        wait = self._next - now
        if wait > self.margin:
            self._next = max(self._next - min(wait - self.margin, self.max_slew), self._earliest)
            self._handle.cancel()
            self._handle = self._call_at(self._next, self._tick)

    def _emit(self, anchor: float) -> None:
        """Send the next frame; the following slot is one period after ``anchor``."""
        item = self.buffer.pop()
        if item is None:
            self._send(self._silence, None)
            self._talking = False
            self._hiccup = 0
        else:
            self._send(item[0], self._time() - item[1])
            self._talking = True
            self._watch_backlog(len(self.buffer))
        # keep the grid (or run max_slew fast to drain a small backlog), unless this send was late: then the next
        # one may come only max_slew early
        self._earliest = self._time() + self.period - self.max_slew
        step = self.period - self.max_slew if self._draining else self.period
        self._next = max(anchor + step, self._earliest)
        self._handle = self._call_at(self._next, self._tick)

    def _watch_backlog(self, backlog: int) -> None:
        """Remove latency that a live stream can never drain by itself.

        A reply generated faster than real time (TTS) makes the backlog grow or drain; audio that arrives in real
        time after a stall or a late frame keeps a steady backlog for as long as the stream lasts. Only the second
        kind is acted on, once its backlog has stayed within ``STEADY_SPREAD`` frames: up to ``DRAIN_MAX_FRAMES``
        after ``DRAIN_AFTER_TICKS`` slots, by sending ``max_slew`` early until it is gone (nothing is lost; with the
        default 5 ms, 1 frame takes 4 slots, 10 frames 40); more than that after ``TRIM_AFTER_TICKS`` slots, by
        dropping it. Three slots, because a stream delivered in chunks of 40 or 60 ms leaves a backlog that never
        lasts three. Ten frames, because draining them is quicker than the second a trim waits, and loses nothing.
        Within ``HICCUP_TICKS`` slots of a hiccup (a slot fired more than 5 ms late, or a silence frame for late
        audio), a backlog needs no three slots of proof: the hiccup is what made it, and each slot of waiting keeps
        every frame of the stream a period late.
        """
        hiccup = self._hiccup > 0
        if hiccup:
            self._hiccup -= 1
        if backlog == 0:
            self._backlog_ticks = 0
            self._draining = False
            return
        if self._backlog_ticks == 0:
            self._backlog_min = self._backlog_max = backlog
            if hiccup:  # a backlog left by a hiccup needs no proof that it is steady
                self._backlog_ticks = DRAIN_AFTER_TICKS - 1
        else:
            self._backlog_min = min(self._backlog_min, backlog)
            self._backlog_max = max(self._backlog_max, backlog)
        self._backlog_ticks += 1
        if self._backlog_max - self._backlog_min > STEADY_SPREAD:
            self._backlog_ticks = 0
            self._draining = False
            self._hiccup = 0
        elif self._backlog_max <= DRAIN_MAX_FRAMES:
            self._draining = self._backlog_ticks >= DRAIN_AFTER_TICKS
        elif self._backlog_ticks >= TRIM_AFTER_TICKS:
            for _ in range(self._backlog_min):
                self.buffer.pop()
            if self._on_drop:
                self._on_drop(self._backlog_min)
            self._backlog_ticks = 0

    def _tick(self) -> None:
        now = self._time()
        slot = self._next
        if self._grace:  # grace expired with nothing whole to play
            self._grace = False
            if self.buffer.has_partial:  # a reply's last, short frame: padded and played now, not a slot later
                self.buffer.flush_partial(self.buffer.partial_since)
                self._emit(now)
                return
            self._send(self._silence, None)
            self._talking = False
            self._hiccup = HICCUP_TICKS
            self._earliest = now + self.period - self.max_slew
            self._next = max(slot - self.grace + self.period, self._earliest)
            self._handle = self._call_at(self._next, self._tick)
            return
        buffer = self.buffer
        if not buffer and buffer.has_partial and now - buffer.partial_since >= self.period:
            # the end of a reply that does not fill a whole frame: pad it rather than hold it until the next reply
            buffer.flush_partial(buffer.partial_since)
        lateness = now - slot
        if lateness > LATE_AFTER:
            self._hiccup = HICCUP_TICKS
            if self._on_late:
                self._on_late()
        if not buffer and self._talking and self.grace > 0:
            self._grace = True
            # the grace is the provider's: a slot this loop was itself late for waits the whole grace from now
            self._next = (now if lateness > LATE_AFTER else slot) + self.grace
            self._handle = self._call_at(self._next, self._tick)
            return
        # a stalled loop restarts the grid from now instead of catching up in a burst
        self._emit(now if lateness > self.period else slot)
