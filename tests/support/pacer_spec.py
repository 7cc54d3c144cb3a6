"""The pacer's specification as event scripts (tests/vectors/pacer/*.json, see its README), and their replay on a
virtual clock through either pacer: audio/pacer.py's Pacer, or the compiled relay's core (``_relay.Pacer``).

A script is data: the pacer's settings, the provider audio that arrives and when, the spans in which the event loop
is blocked, and what the caller must hear and when. Replaying it runs every event at its time on a clock that only
moves from one event to the next, so what is checked is the pacer's rules, never the machine's timing.
"""

from __future__ import annotations

import functools
import heapq
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avr_runtime.audio.buffer import Overflow, PlayoutBuffer
from avr_runtime.audio.clock import Slot
from avr_runtime.audio.pacer import Pacer

SCRIPTS = Path(__file__).resolve().parents[1] / "vectors" / "pacer"
FRAME = 320
SILENCE = bytes(FRAME)
_PART = re.compile(r"f(\d+)(?:\[(\d*):(\d*)\])?$")


def frame(i: int) -> bytes:
    """Frame ``i`` of a script: one byte value throughout, never zero, so every frame played can be named."""
    return bytes([1 + i % 250]) * FRAME


def audio(spec: str) -> bytes:
    """``"f3 f4[:160]"``: frame 3, then the first half of frame 4."""
    out = b""
    for word in spec.split():
        m = _PART.match(word)
        if m is None:
            raise ValueError(f"not a frame: {word!r}")
        whole = frame(int(m[1]))
        out += whole if m[2] is None else whole[int(m[2] or 0) : int(m[3] or FRAME)]
    return out


def name(played: bytes) -> str:
    """What a played frame was: ``-`` for silence, ``f3`` for frame 3, ``f8*100`` for 100 bytes of frame 8 padded
    with silence, ``f3*160+f4*160`` for a frame made of two."""
    if not any(played):
        return "-"
    runs: list[tuple[int, int]] = []
    for b in played:
        if runs and runs[-1][0] == b:
            runs[-1] = (b, runs[-1][1] + 1)
        else:
            runs.append((b, 1))
    if len(runs) == 1 and runs[0][1] == FRAME:
        return f"f{runs[0][0] - 1}"
    return "+".join(f"f{b - 1}*{n}" for b, n in runs if b)


@dataclass(frozen=True)
class Script:
    name: str
    why: str
    settings: dict[str, Any]
    pushes: list[tuple[float, bytes]]  # (when, audio), in time order
    stalls: list[tuple[float, float]]  # the event loop is blocked from the first time to the second
    until: float
    expect: list[tuple[float, str]]  # every frame played: when, what (see name())
    counts: dict[str, int]  # late slots, frames cut from a backlog

    @classmethod
    def load(cls, path: Path) -> Script:
        raw = json.loads(path.read_text())
        pushes: list[tuple[float, bytes]] = []
        for event in raw["audio"]:
            if "every" in event:  # a live stream: one frame a period, from ``at`` on
                first, stop = event["frames"]
                late = {int(k): v for k, v in event.get("late", {}).items()}
                for i in range(first, stop):
                    when = event["at"] + (i - first) * event["every"] + late.get(i, 0.0)
                    pushes.append((round(when, 9), frame(i)))
            else:
                pushes.append((event["at"], audio(event["push"])))
        pushes.sort(key=lambda p: p[0])
        return cls(
            path.stem,
            raw["why"],
            raw["settings"],
            pushes,
            [(a, b) for a, b in raw.get("stalls", [])],
            raw["until"],
            [(t, what) for t, what in raw["expect"]],
            raw.get("counts", {}),
        )


def scripts() -> list[Script]:
    return [Script.load(p) for p in sorted(SCRIPTS.glob("*.json"))]


@dataclass
class Replay:
    """What a pacer did with a script."""

    played: list[tuple[float, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


class VirtualLoop:
    """An event loop's timers on a virtual clock: callbacks run in the order of their time (the order they were
    scheduled in on a tie), each with the clock set to its time, or to the end of a stall it falls in."""

    def __init__(self, stalls: list[tuple[float, float]]) -> None:
        self.now = 0.0
        self._stalls = stalls
        self._heap: list[tuple[float, int, Slot]] = []
        self._seq = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Slot:
        handle = Slot(callback)
        heapq.heappush(self._heap, (when, self._seq, handle))
        self._seq += 1
        return handle

    def run_until(self, until: float) -> None:
        while self._heap and self._heap[0][0] <= until:
            when, _, handle = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            self.now = blocked_until(max(when, self.now), self._stalls)
            handle.callback()


def blocked_until(t: float, stalls: list[tuple[float, float]]) -> float:
    """When a callback due at ``t`` runs: at ``t``, or when the stall it falls in ends."""
    for start, end in stalls:
        if start <= t < end:
            return end
    return t


def replay_python(script: Script) -> Replay:
    s = script.settings
    loop = VirtualLoop(script.stalls)
    out = Replay(counts={"late": 0, "dropped_latency": 0})
    policy = Overflow.DROP_NEWEST if s.get("drop_newest") else Overflow.DROP_OLDEST
    buffer = PlayoutBuffer(FRAME, s["capacity"], policy)

    def send(played: bytes, waited: float | None) -> None:
        out.played.append((loop.now, name(played)))

    def late() -> None:
        out.counts["late"] += 1

    def dropped(n: int) -> None:
        out.counts["dropped_latency"] += n

    pacer = Pacer(
        buffer,
        send,
        SILENCE,
        period=s["period"],
        margin=s["margin"],
        grace=s.get("grace"),
        max_slew=s["max_slew"],
        on_late=late,
        on_drop=dropped,
        clock=loop,
    )
    pacer.start()  # the first slot at 0, the clock's start

    def push(data: bytes) -> None:
        was_empty = len(buffer) == 0
        buffer.push(data, loop.now)
        pacer.audio_arrived(was_empty)

    for when, data in script.pushes:  # scheduled first: on a tie, audio comes before a slot
        loop.call_at(when, functools.partial(push, data))
    loop.run_until(script.until)
    return out


def replay_c(script: Script, pacer_type: Any) -> Replay:
    """The same through the compiled core: here the replay itself is the loop, the core's ``next`` its one timer."""
    s = script.settings
    grace = s.get("grace")
    pacer = pacer_type(
        s["capacity"],
        s["period"],
        s["margin"],
        -1.0 if grace is None else grace,
        s["max_slew"],
        0.0,
        bool(s.get("drop_newest")),
    )
    out = Replay()
    now = 0.0
    pushes = list(script.pushes)
    while True:
        slot = pacer.next
        if pushes and pushes[0][0] <= slot:  # on a tie, audio comes before a slot
            when, data = pushes.pop(0)
            if when > script.until:
                break
            now = blocked_until(max(when, now), script.stalls)
            step = pacer.push(data, now)
        else:
            if slot > script.until:
                break
            now = blocked_until(max(slot, now), script.stalls)
            step = pacer.tick(now)
        if step is not None:
            out.played.append((now, "-" if step[0] is None else name(step[0])))
    counts = pacer.counts
    out.counts = {"late": counts["late"], "dropped_latency": counts["dropped_latency"]}
    return out
