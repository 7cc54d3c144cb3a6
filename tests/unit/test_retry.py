"""Provider retries: only connection-level failures, bounded attempts, per-attempt timeout, bounded backoff."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from prometheus_client import REGISTRY

from avr_runtime.services.pool import ProviderUnavailable, RetryPolicy, with_retries

FAST = RetryPolicy(retries=3, timeout=0.2, base_delay=0.001, max_delay=0.004)


class Attempts:
    def __init__(self, failures: list[BaseException], result: str = "ok") -> None:
        self.failures = failures
        self.result = result
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.result


def retries_metric(provider: str) -> float:
    v = REGISTRY.get_sample_value("avr_provider_retries_total", {"provider": provider})
    return 0.0 if v is None else v


async def test_success_first_time() -> None:
    a = Attempts([])
    assert await with_retries("t1", FAST, a) == "ok"
    assert a.calls == 1


@pytest.mark.parametrize(
    "exc", [OSError("refused"), ConnectionResetError(), aiohttp.ClientConnectionError("x"), TimeoutError()]
)
async def test_retryable_errors_are_retried(exc: BaseException) -> None:
    before = retries_metric("t2")
    a = Attempts([exc, exc])
    assert await with_retries("t2", FAST, a) == "ok"
    assert a.calls == 3
    assert retries_metric("t2") == before + 2


@pytest.mark.parametrize("exc", [ValueError("bad"), KeyError("k"), RuntimeError("boom")])
async def test_other_errors_are_not_retried(exc: Exception) -> None:
    a = Attempts([exc])
    with pytest.raises(type(exc)):
        await with_retries("t3", FAST, a)
    assert a.calls == 1


@pytest.mark.parametrize("retries", [0, 1, 3])
async def test_gives_up_after_retries_plus_one(retries: int) -> None:
    policy = RetryPolicy(retries=retries, timeout=0.2, base_delay=0.001, max_delay=0.002)
    a = Attempts([OSError(f"down {i}") for i in range(10)])
    with pytest.raises(ProviderUnavailable) as err:
        await with_retries("tts", policy, a)
    assert a.calls == retries + 1
    assert err.value.provider == "tts"
    assert f"{retries + 1} attempts" in str(err.value)
    assert f"down {retries}" in str(err.value)  # the last error is named
    assert isinstance(err.value, ConnectionError)


async def test_per_attempt_timeout() -> None:
    calls = 0

    async def hang() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)
        return "never"

    policy = RetryPolicy(retries=2, timeout=0.05, base_delay=0.001, max_delay=0.002)
    start = time.monotonic()
    with pytest.raises(ProviderUnavailable):
        await with_retries("slow", policy, hang)
    elapsed = time.monotonic() - start
    assert calls == 3
    assert elapsed >= 3 * 0.05 * 0.9
    assert elapsed <= policy.worst_case + 1.0


async def test_slow_attempt_that_finishes_in_time_is_kept() -> None:
    async def slow_ok() -> str:
        await asyncio.sleep(0.02)
        return "done"

    assert await with_retries("s", RetryPolicy(retries=0, timeout=1.0), slow_ok) == "done"


def test_worst_case_bound() -> None:
    p = RetryPolicy(retries=3, timeout=5.0, base_delay=0.05, max_delay=1.0)
    # 4 attempts of 5 s plus backoffs 0.05, 0.1, 0.2
    assert p.worst_case == pytest.approx(20.35)
    capped = RetryPolicy(retries=6, timeout=1.0, base_delay=0.5, max_delay=1.0)
    # backoffs 0.5, 1, 1, 1, 1, 1 (capped at max_delay)
    assert capped.worst_case == pytest.approx(7 + 5.5)
    assert RetryPolicy(retries=0, timeout=2.0).worst_case == pytest.approx(2.0)


@pytest.mark.parametrize("attempt", [0, 1, 2, 5, 10, 30])
def test_backoff_is_full_jitter_bounded_by_max_delay(attempt: int) -> None:
    p = RetryPolicy(retries=3, base_delay=0.05, max_delay=1.0)
    cap = min(1.0, 0.05 * 2**attempt)
    values = [p.backoff(attempt) for _ in range(2000)]
    assert all(0.0 <= v <= cap for v in values)
    # spread over the range, not a constant
    assert min(values) < 0.1 * cap
    assert max(values) > 0.9 * cap


async def test_backoff_total_is_bounded() -> None:
    policy = RetryPolicy(retries=4, timeout=0.5, base_delay=0.01, max_delay=0.02)
    a = Attempts([OSError() for _ in range(10)])
    start = time.monotonic()
    with pytest.raises(ProviderUnavailable):
        await with_retries("b", policy, a)
    assert time.monotonic() - start <= policy.worst_case
