"""Pooled provider connections with timeouts and retries (exponential backoff, full jitter).

One ``HttpPool`` per provider: request/response providers (LLM, TTS) share at most ``size`` keep-alive connections,
and requests beyond that wait in ``avr_provider_waiting``; per-call streams (ASR, STS) get a connection each.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
import orjson

from avr_runtime.services import metrics, tracing

T = TypeVar("T")
_JSON_HEADERS = {"Content-Type": "application/json"}


class ProviderUnavailable(ConnectionError):
    """The provider could not be reached or answered with an error after every retry."""

    def __init__(self, provider: str, detail: str) -> None:
        super().__init__(f"{provider} provider unavailable: {detail}")
        self.provider = provider


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    timeout: float = 5.0  # seconds per attempt
    base_delay: float = 0.05
    max_delay: float = 1.0

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2^attempt)] so retries from many calls spread out."""
        return random.uniform(0.0, min(self.max_delay, self.base_delay * (2**attempt)))

    @property
    def worst_case(self) -> float:
        """Upper bound of time spent before giving up: what keeps a dead provider from hanging a call."""
        return (self.retries + 1) * self.timeout + sum(
            min(self.max_delay, self.base_delay * 2.0**i) for i in range(self.retries)
        )


RETRYABLE: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, TimeoutError)


async def with_retries(provider: str, policy: RetryPolicy, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` with a per-attempt timeout, retrying connection-level failures."""
    last: BaseException | None = None
    for n in range(policy.retries + 1):
        if n:
            metrics.PROVIDER_RETRIES.labels(provider).inc()
            await asyncio.sleep(policy.backoff(n - 1))
        try:
            async with asyncio.timeout(policy.timeout):
                return await attempt()
        except RETRYABLE as exc:
            last = exc
            reason = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            metrics.PROVIDER_ERRORS.labels(provider, reason).inc()
    raise ProviderUnavailable(provider, f"{policy.retries + 1} attempts failed, last: {last!r}")


class HttpPool:
    """An aiohttp session per provider; ``limited`` pools cap concurrent connections at ``size``."""

    def __init__(self, name: str, size: int, policy: RetryPolicy, *, limited: bool = True) -> None:
        self.name = name
        self.policy = policy
        self.size = size
        self._slots = asyncio.Semaphore(size) if limited else None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.timeout, sock_read=policy.timeout)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=size if limited else 0, keepalive_timeout=30),
            timeout=timeout,
            auto_decompress=False,
        )

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the pool's connections; waiting for one counts as queued work."""
        if self._slots is None:
            yield
            return
        if self._slots.locked():
            with metrics.queued():
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._slots.release()
            metrics.PROVIDER_DURATION.labels(self.name).observe(time.perf_counter() - start)

    @asynccontextmanager
    async def post_json(
        self, url: str, payload: object, call_uuid: str | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST JSON through the pool with retries; yields a streaming response whose status is below 400.

        ``call_uuid`` goes as ``X-UUID``, as avr-core (1.5.5 and later) sends it on every provider request."""
        body = orjson.dumps(payload)
        headers = {**_JSON_HEADERS, **tracing.headers()}
        if call_uuid is not None:
            headers["X-UUID"] = call_uuid
        async with self.slot():
            resp = await with_retries(
                self.name, self.policy, lambda: self.session.post(url, data=body, headers=headers)
            )
            async with resp:
                if resp.status >= 400:
                    metrics.PROVIDER_ERRORS.labels(self.name, f"http_{resp.status}").inc()
                    raise ProviderUnavailable(self.name, f"HTTP {resp.status}")
                yield resp

    async def close(self) -> None:
        await self.session.close()
