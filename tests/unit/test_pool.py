"""HttpPool: at most ``size`` requests hold a connection; the rest wait and are counted in avr_provider_waiting."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from avr_runtime.services.pool import HttpPool, RetryPolicy


def queue_length() -> float:
    value = REGISTRY.get_sample_value("avr_provider_waiting")
    assert value is not None
    return value


async def test_requests_beyond_the_pool_wait_and_are_counted() -> None:
    pool = HttpPool("test", 2, RetryPolicy(retries=0, timeout=1.0))
    release = asyncio.Event()
    inside = 0
    peak = 0

    async def request() -> None:
        nonlocal inside, peak
        async with pool.slot():
            inside += 1
            peak = max(peak, inside)
            await release.wait()
            inside -= 1

    base = queue_length()
    tasks = [asyncio.create_task(request()) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert inside == 2
    assert queue_length() - base == 3
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 2
    assert queue_length() == base
    await pool.close()


async def test_unlimited_pools_never_queue() -> None:
    pool = HttpPool("stream", 1, RetryPolicy(retries=0, timeout=1.0), limited=False)
    base = queue_length()
    gate = asyncio.Event()

    async def hold() -> None:
        async with pool.slot():
            await gate.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(4)]
    await asyncio.sleep(0.02)
    assert queue_length() == base
    gate.set()
    await asyncio.gather(*tasks)
    await pool.close()
