"""One event-loop timer per millisecond for every call's pacer, instead of one timer per frame per call.

Hot path: each call's pacer wakes 50 times a second; with a loop timer each (``call_at``: a timer handle, a libuv
timer start and stop, a callback dispatch) that work grows with every call. Here slots due in the same
millisecond share one loop timer. A slot fires at the end of its millisecond, never early: at most ``resolution``
late, which the pacer's playout margin absorbs.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable


class Slot:
    """A scheduled callback; ``cancel`` is O(1) (the slot is skipped when its millisecond comes)."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class SlotClock:
    __slots__ = ("_buckets", "_loop", "_per_second", "resolution", "time")

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = 0.001) -> None:
        if resolution <= 0:
            raise ValueError("resolution must be positive")
        self._loop = loop
        self.time: Callable[[], float] = loop.time  # the loop's own clock, not a wrapper: read on every frame
        self.resolution = resolution
        self._per_second = 1.0 / resolution
        self._buckets: dict[int, list[Slot]] = {}

    def call_at(self, when: float, callback: Callable[[], None]) -> Slot:
        key = math.ceil(when * self._per_second)
        slot = Slot(callback)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [slot]
            self._loop.call_at(key * self.resolution, self._fire, key)
        else:
            bucket.append(slot)
        return slot

    def _fire(self, key: int) -> None:
        for slot in self._buckets.pop(key, ()):
            if slot.cancelled:
                continue
            try:
                slot.callback()
            except Exception as exc:  # one call's failure must not skip the others in this millisecond
                self._loop.call_exception_handler(
                    {"message": "pacer slot callback failed", "exception": exc, "handle": slot}
                )

    @property
    def pending(self) -> int:
        return sum(len(b) for b in self._buckets.values())
