"""Per-resource work loop: triggers coalesce, one reconcile at a time per resource, periodic resync.

Watch events of the resource and of its children all just mark the resource dirty; a single task per resource
does the work, so bursts (a rollout updates a Deployment's status many times) cost one reconcile, not many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name
# Returns seconds until the next check (None: the regular resync).
Work = Callable[[str, str], Awaitable[float | None]]


class GoneError(Exception):
    """Raised by the work when its resource no longer exists: the queue forgets it."""


@dataclass
class _Slot:
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class WorkQueue:
    def __init__(
        self, work: Work, *, resync_seconds: float, debounce_seconds: float = 0.2, concurrency: int = 32
    ) -> None:
        self._work = work
        # Runs at once across resources: bounds the memory of work in flight (a burst of new resources would
        # otherwise render and hold all their manifests together while waiting for the API server).
        self._running = asyncio.Semaphore(concurrency)
        self._resync = resync_seconds
        self._debounce = debounce_seconds
        self._slots: dict[Key, _Slot] = {}
        self.runs = 0

    def __len__(self) -> int:
        return len(self._slots)

    def trigger(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        slot.wakeup.set()
        if slot.task is None or slot.task.done():
            slot.task = asyncio.create_task(self._loop(key, slot), name=f"avr-reconcile-{namespace}/{name}")

    def forget(self, namespace: str, name: str) -> None:
        slot = self._slots.pop((namespace, name), None)
        if slot is not None and slot.task is not None:
            slot.task.cancel()

    async def stop(self) -> None:
        tasks = [s.task for s in self._slots.values() if s.task is not None]
        self._slots.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self, key: Key, slot: _Slot) -> None:
        delay: float | None = None
        while True:
            timeout = self._resync if delay is None else min(delay, self._resync)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot.wakeup.wait(), timeout)
            await asyncio.sleep(self._debounce)
            async with self._running:
                slot.wakeup.clear()  # triggers that arrived while waiting for a turn are covered by this run
                self.runs += 1
                try:
                    delay = await self._work(*key)
                except asyncio.CancelledError:
                    raise
                except GoneError:
                    if self._slots.get(key) is slot and not slot.wakeup.is_set():
                        del self._slots[key]
                        return
                    delay = None
                except Exception:
                    log.exception("reconciling %s/%s failed; retrying", *key)
                    delay = 10.0
