"""AVR speech-to-speech provider client: one WebSocket per call, JSON messages both ways."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

from avr_runtime.protocol import sts
from avr_runtime.services import metrics
from avr_runtime.services.pool import HttpPool, with_retries
from avr_runtime.services.providers.base import Listener, ProviderSession

log = logging.getLogger(__name__)

#: Caller audio waiting to go to a provider that does not keep up: 1 s, then the oldest is dropped (older audio
#: would only reach a live conversation as latency).
SEND_QUEUE_FRAMES = 50


def with_query(url: str, params: dict[str, Any]) -> str:
    """AVR appends the /call payload to STS_URL as query parameters."""
    if not params:
        return url
    parts = urlsplit(url)
    flat = {k: v if isinstance(v, str) else str(v) for k, v in params.items() if v is not None}
    query = "&".join(q for q in (parts.query, urlencode(flat)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class StsSession(ProviderSession):
    def __init__(self, pool: HttpPool, url: str, call_uuid: str, listener: Listener, metadata: dict[str, Any]) -> None:
        super().__init__()
        self._pool = pool
        self._url = with_query(url, metadata)
        self._uuid = call_uuid
        self._listener = listener
        self._metadata = metadata
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        async def connect() -> aiohttp.ClientWebSocketResponse:
            return await self._pool.session.ws_connect(
                self._url, compress=0, autoping=True, heartbeat=None, max_msg_size=4 * 1024 * 1024
            )

        self._ws = await with_retries("sts", self._pool.policy, connect)
        await self._ws.send_str(sts.encode_init(self._uuid, self._metadata or None))
        self._tasks = [
            asyncio.create_task(self._reader(), name=f"sts-read-{self._uuid}"),
            asyncio.create_task(self._writer(), name=f"sts-write-{self._uuid}"),
        ]

    def send_audio(self, pcm: bytes) -> None:
        q = self._outbox
        if q.qsize() >= SEND_QUEUE_FRAMES:
            q.get_nowait()
            metrics.DROPPED_BACKPRESSURE.inc()
        q.put_nowait(sts.encode_audio(pcm))

    def send_dtmf(self, digit: str) -> None:
        self._outbox.put_nowait(sts.encode_dtmf(digit))

    async def _writer(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            while True:
                await ws.send_str(await self._outbox.get())
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            metrics.PROVIDER_ERRORS.labels("sts", "send").inc()
            self._end(f"provider_send_failed: {exc}")

    async def _reader(self) -> None:
        ws = self._ws
        assert ws is not None
        listener = self._listener
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                if msg.type is aiohttp.WSMsgType.ERROR:
                    break
                continue
            try:
                ev = sts.decode(msg.data)
            except sts.MessageError as exc:
                metrics.PROVIDER_ERRORS.labels("sts", "bad_message").inc()
                log.warning("call %s: unreadable STS message: %s", self._uuid, exc)
                continue
            if type(ev) is sts.Audio:
                listener.on_audio(ev.pcm)
            elif isinstance(ev, sts.Interruption):
                listener.on_interruption("provider")
            elif isinstance(ev, sts.Transcript):
                listener.on_transcript(ev.role, ev.text)
            elif isinstance(ev, sts.ProviderError):
                metrics.PROVIDER_ERRORS.labels("sts", "provider_error").inc()
                log.warning("call %s: STS provider error: %s", self._uuid, ev.message)
        if not self.ended.done():
            metrics.PROVIDER_ERRORS.labels("sts", "closed").inc()
        self._end("provider_closed")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        self._end("closed")
