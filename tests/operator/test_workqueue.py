"""The per-resource work loop: coalescing, one run at a time, requeue, resync, survival of errors."""

from __future__ import annotations

import asyncio

from avr_operator.workqueue import WorkQueue


async def test_bursts_coalesce_into_one_run() -> None:
    calls: list[tuple[str, str]] = []

    async def work(namespace: str, name: str) -> float | None:
        calls.append((namespace, name))
        return None

    queue = WorkQueue(work, resync_seconds=60, debounce_seconds=0.05)
    for _ in range(20):
        queue.trigger("ns", "a")
    queue.trigger("ns", "b")
    await asyncio.sleep(0.2)
    assert sorted(calls) == [("ns", "a"), ("ns", "b")]
    assert len(queue) == 2
    await queue.stop()


async def test_runs_never_overlap_and_a_trigger_during_a_run_reruns() -> None:
    running = 0
    peak = 0
    runs = 0

    async def work(namespace: str, name: str) -> float | None:
        nonlocal running, peak, runs
        running += 1
        runs += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return None

    queue = WorkQueue(work, resync_seconds=60, debounce_seconds=0.0)
    queue.trigger("ns", "a")
    await asyncio.sleep(0.02)
    queue.trigger("ns", "a")  # arrives mid-run
    await asyncio.sleep(0.2)
    assert peak == 1 and runs == 2
    await queue.stop()


async def test_requeue_resync_and_errors() -> None:
    runs = 0

    async def work(namespace: str, name: str) -> float | None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("boom")
        return 0.05 if runs < 4 else None

    queue = WorkQueue(work, resync_seconds=0.1, debounce_seconds=0.0)
    queue.trigger("ns", "a")
    await asyncio.sleep(0.05)
    assert runs == 1  # the error backs off instead of spinning
    await queue.stop()

    runs = 1
    queue = WorkQueue(work, resync_seconds=0.1, debounce_seconds=0.0)
    queue.trigger("ns", "a")
    await asyncio.sleep(0.45)
    assert runs >= 5  # requeues, then the periodic resync keeps checking
    await queue.stop()


async def test_forget_stops_the_loop() -> None:
    runs = 0

    async def work(namespace: str, name: str) -> float | None:
        nonlocal runs
        runs += 1
        return 0.01

    queue = WorkQueue(work, resync_seconds=0.01, debounce_seconds=0.0)
    queue.trigger("ns", "a")
    await asyncio.sleep(0.05)
    queue.forget("ns", "a")
    seen = runs
    await asyncio.sleep(0.05)
    assert runs == seen and len(queue) == 0


async def test_a_resource_that_is_gone_is_forgotten() -> None:
    from avr_operator.workqueue import GoneError  # noqa: PLC0415

    async def work(namespace: str, name: str) -> float | None:
        raise GoneError

    queue = WorkQueue(work, resync_seconds=60, debounce_seconds=0.01)
    queue.trigger("ns", "a")
    await asyncio.sleep(0.1)
    assert len(queue) == 0
    await queue.stop()


async def test_concurrency_is_bounded_across_resources() -> None:
    running = peak = 0

    async def work(namespace: str, name: str) -> float | None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return None

    queue = WorkQueue(work, resync_seconds=60, debounce_seconds=0.0, concurrency=3)
    for i in range(10):
        queue.trigger("ns", f"r{i}")
    await asyncio.sleep(0.3)
    assert peak == 3 and queue.runs == 10
    await queue.stop()


async def test_idle_resources_hold_no_task_and_runs_never_keep_the_triggering_context() -> None:
    import contextvars  # noqa: PLC0415

    event: contextvars.ContextVar[str] = contextvars.ContextVar("event")
    seen: list[str] = []

    async def work(namespace: str, name: str) -> float | None:
        seen.append(event.get("none"))
        return None

    queue = WorkQueue(work, resync_seconds=60, debounce_seconds=0.0)

    def handler(i: int) -> None:
        event.set(f"event {i}")
        queue.trigger("ns", f"r{i}")

    before = len(asyncio.all_tasks())
    for i in range(3):
        # Each watch event runs its handler in a context of its own (kopf's holds the event's body).
        contextvars.copy_context().run(handler, i)
    await asyncio.sleep(0.1)
    assert seen == ["event 0"] * 3  # the first trigger's context, never a later event's
    assert len(asyncio.all_tasks()) == before  # waiting for the resync costs a timer, not a task
    await queue.stop()
