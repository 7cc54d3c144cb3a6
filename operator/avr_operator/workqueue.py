"""Per-resource work scheduling: triggers coalesce, one reconcile at a time per resource, periodic resync.

Watch events of the resource and of its children all just mark the resource dirty; one run covers every
trigger that came before it started, so bursts (a rollout updates a Deployment's status many times) cost one
reconcile, not many.

Memory stays flat with thousands of resources: an idle resource costs a slot and one timer, no task. A task
exists only while a run waits for its turn or works. Timers and tasks run in one context captured at the
first trigger, not in the context of whichever watch event triggered them: a task inherits its creator's
context, and kopf's per-event context holds that event's whole body (for the life of the task).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name
# Returns seconds until the next check (None: the regular resync).
Work = Callable[[str, str], Awaitable[float | None]]
ERROR_RETRY_SECONDS = 10.0


class GoneError(Exception):
    """Raised by the work when its resource no longer exists: the queue forgets it."""


@dataclass(slots=True)
class _Slot:
    dirty: bool = False  # triggered since the last run started
    timer: asyncio.TimerHandle | None = None  # the next run, while none is under way
    task: asyncio.Task[None] | None = None  # the run waiting for its turn or working


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
        # Captured at the first trigger (from a kopf handler, where kopf.event finds its posting queue).
        self._context: contextvars.Context | None = None
        self.runs = 0

    def __len__(self) -> int:
        return len(self._slots)

    def trigger(self, namespace: str, name: str) -> None:
        if self._context is None:
            self._context = contextvars.copy_context()
        key = (namespace, name)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        slot.dirty = True
        if slot.task is None:  # a run under way reschedules itself when it ends
            self._schedule(key, slot, self._debounce)

    def forget(self, namespace: str, name: str) -> None:
        slot = self._slots.pop((namespace, name), None)
        if slot is not None:
            self._cancel(slot)

    async def stop(self) -> None:
        slots = list(self._slots.values())
        self._slots.clear()
        tasks = [s.task for s in slots if s.task is not None]
        for slot in slots:
            self._cancel(slot)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @staticmethod
    def _cancel(slot: _Slot) -> None:
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        if slot.task is not None:
            slot.task.cancel()

    def _schedule(self, key: Key, slot: _Slot, delay: float) -> None:
        """Run in `delay` seconds, unless a run is already planned sooner."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if slot.timer is not None:
            if slot.timer.when() <= when:
                return
            slot.timer.cancel()
        slot.timer = loop.call_at(when, self._start, key, slot, context=self._context)

    def _start(self, key: Key, slot: _Slot) -> None:
        slot.timer = None
        if self._slots.get(key) is not slot or slot.task is not None:
            return
        context = self._context.copy() if self._context is not None else None
        slot.task = asyncio.get_running_loop().create_task(
            self._run(key, slot), name=f"avr-reconcile-{key[0]}/{key[1]}", context=context
        )

    async def _run(self, key: Key, slot: _Slot) -> None:
        delay: float | None = None
        try:
            async with self._running:
                slot.dirty = False  # triggers that arrived while waiting for a turn are covered by this run
                self.runs += 1
                try:
                    delay = await self._work(*key)
                except GoneError:
                    if self._slots.get(key) is slot and not slot.dirty:
                        del self._slots[key]
                        return
                except Exception:
                    log.exception("reconciling %s/%s failed; retrying", *key)
                    delay = ERROR_RETRY_SECONDS
        finally:
            slot.task = None
        if self._slots.get(key) is slot:
            later = self._resync if delay is None else min(delay, self._resync)
            self._schedule(key, slot, self._debounce if slot.dirty else later)
