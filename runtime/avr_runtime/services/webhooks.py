"""AVR webhooks: call events POSTed as JSON to ``WEBHOOK_URL``, off the audio path.

Events go through a bounded queue to one sender task, so a slow webhook receiver can delay events but never a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import orjson

from avr_runtime.services import metrics

log = logging.getLogger(__name__)

EVENT_TYPES: Final = frozenset(
    {"call_initiated", "call_started", "call_ended", "interruption", "transcription", "dtmf_digit"}
)
SECRET_HEADER: Final = "X-AVR-WEBHOOK-SECRET"


def event(call_uuid: str, kind: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {kind!r}")
    return {
        "uuid": call_uuid,
        "type": kind,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "payload": payload or {},
    }


class WebhookSender:
    def __init__(self, url: str, secret: str | None, timeout_ms: int, retries: int, queue_size: int = 10_000) -> None:
        self.url = url
        self._headers = {"Content-Type": "application/json"}
        if secret:
            self._headers[SECRET_HEADER] = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
        self._retries = retries
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(queue_size)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._task = asyncio.create_task(self._run(), name="webhooks")

    def emit(self, call_uuid: str, kind: str, payload: dict[str, Any] | None = None) -> None:
        try:
            self._queue.put_nowait(event(call_uuid, kind, payload))
        except asyncio.QueueFull:
            metrics.WEBHOOKS.labels("dropped").inc()

    async def deliver_now(self, call_uuid: str, kind: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """Deliver one event and wait for the receiver's answer (a JSON object), within the timeout and retries.

        For ``call_initiated``: avr-core waits for it, and an ``sts_url`` in the answer routes the call."""
        return await self._deliver(event(call_uuid, kind, payload))

    async def _deliver(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST the event; the receiver's JSON answer if it sent an object, else None."""
        assert self._session is not None
        data = orjson.dumps(body)
        for attempt in range(self._retries + 1):
            try:
                async with self._session.post(self.url, data=data, headers=self._headers) as resp:
                    if resp.status < 400:
                        metrics.WEBHOOKS.labels("ok").inc()
                        try:
                            answer = orjson.loads(await resp.read())
                        except orjson.JSONDecodeError:
                            return None
                        return answer if isinstance(answer, dict) else None
                    detail = f"HTTP {resp.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                detail = repr(exc)
            if attempt < self._retries:
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        metrics.WEBHOOKS.labels("failed").inc()
        log.warning("webhook %s for call %s failed: %s", body["type"], body["uuid"], detail)
        return None

    async def _run(self) -> None:
        while True:
            body = await self._queue.get()
            try:
                await self._deliver(body)
            finally:
                self._queue.task_done()

    async def close(self, deadline: float = 5.0) -> None:
        """Deliver what is queued (up to ``deadline`` seconds), then stop."""
        start = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=deadline)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session:
            await self._session.close()
        log.debug("webhooks closed after %.2fs", time.monotonic() - start)
