"""AVR speech-to-speech provider client: one WebSocket per call, JSON messages both ways."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from avr_runtime.protocol import sts, websocket
from avr_runtime.services import metrics, tracing
from avr_runtime.services.pool import RetryPolicy, with_retries
from avr_runtime.services.providers import wsclient
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
    """One WebSocket per call. Caller audio is written synchronously from the AudioSocket read; provider messages
    are handled in the connection's ``data_received``: no task per direction (see ``wsclient``)."""

    def __init__(
        self, policy: RetryPolicy, url: str, call_uuid: str, listener: Listener, metadata: dict[str, Any]
    ) -> None:
        super().__init__()
        self._policy = policy
        self._url = url  # with the /call payload already appended (WorkerContext.sts_url_for)
        self._uuid = call_uuid
        self._listener = listener
        self._metadata = metadata
        self._conn: wsclient.WebSocketConnection | None = None
        # what the caller says while the provider connects (bounded like a stalled connection's backlog)
        self._early: deque[bytes] = deque(maxlen=SEND_QUEUE_FRAMES)

    def set_call_info(self, url: str | None, metadata: dict[str, Any]) -> None:
        if url:
            self._url = url
        self._metadata = metadata

    async def start(self) -> None:
        async def connect() -> wsclient.WebSocketConnection:
            return await wsclient.connect(
                self._url,
                self._on_message,
                headers=tracing.headers(),
                backlog=SEND_QUEUE_FRAMES,
                on_drop=metrics.DROPPED_BACKPRESSURE.inc,
            )

        with tracing.TRACER.start_as_current_span("sts.connect"):
            conn = await with_retries("sts", self._policy, connect)
        self._conn = conn
        try:
            conn.send(sts.encode_init(self._uuid, self._metadata or None).encode())
            while self._early:
                conn.send(self._early.popleft())
        except wsclient.WebSocketClosed:
            pass  # seen below as the connection's end
        conn.closed.add_done_callback(self._connection_closed)

    @property
    def url(self) -> str:
        """The URL the session connects (or connected) to: STS_URL or the call's own, with its /call payload."""
        return self._url

    @property
    def connection(self) -> wsclient.WebSocketConnection | None:
        """The provider connection once it is open and the greeting has been sent."""
        return self._conn

    def _send(self, message: bytes) -> None:
        conn = self._conn
        if conn is None:
            if len(self._early) == SEND_QUEUE_FRAMES:
                metrics.DROPPED_BACKPRESSURE.inc()
            self._early.append(message)
            return
        try:
            conn.send(message)
        except wsclient.WebSocketClosed as exc:
            if not conn.closed.done():  # else the connection's end decides the reason (see _connection_closed)
                self._fail_send(exc)

    def send_audio(self, pcm: bytes) -> None:
        self._send(sts.encode_audio_bytes(pcm))

    def send_dtmf(self, digit: str) -> None:
        self._send(sts.encode_dtmf(digit).encode())

    def _fail_send(self, exc: Exception) -> None:
        if not self.ended.done():
            metrics.PROVIDER_ERRORS.labels("sts", "send").inc()
            self._end(f"provider_send_failed: {exc}")

    def _on_message(self, opcode: int, payload: bytes) -> None:
        if opcode != websocket.TEXT:
            return
        try:
            pcm = sts.audio_of(payload)
            if pcm is not None:
                self._listener.on_audio(pcm)
                return
            ev = sts.decode(payload)
        except sts.MessageError as exc:
            metrics.PROVIDER_ERRORS.labels("sts", "bad_message").inc()
            log.warning("call %s: unreadable STS message: %s", self._uuid, exc)
            return
        listener = self._listener
        if type(ev) is sts.Audio:
            listener.on_audio(ev.pcm)
        elif isinstance(ev, sts.Interruption):
            listener.on_interruption("provider")
        elif isinstance(ev, sts.Transcript):
            listener.on_transcript(ev.role, ev.text)
        elif isinstance(ev, sts.ProviderError):
            metrics.PROVIDER_ERRORS.labels("sts", "provider_error").inc()
            log.warning("call %s: STS provider error: %s", self._uuid, ev.message)

    def _connection_closed(self, closed: asyncio.Future[str]) -> None:
        reason = closed.result()
        if self.ended.done():
            return
        if reason.startswith("protocol_error"):
            metrics.PROVIDER_ERRORS.labels("sts", "protocol_error").inc()
            log.warning("call %s: STS provider broke the WebSocket protocol: %s", self._uuid, reason)
            self._end(f"provider_{reason}")
            return
        conn = self._conn
        abnormal = websocket.abnormal_end(conn.peer_close_code if conn is not None else None)
        if abnormal is None:  # a goodbye: the call ends normally
            log.info("call %s: the STS provider closed the call (%s)", self._uuid, reason, extra={"uuid": self._uuid})
            self._end("provider_closed")
            return
        metrics.PROVIDER_ERRORS.labels("sts", "dropped" if abnormal == "dropped" else "abnormal_close").inc()
        log.warning(
            "call %s: the STS provider failed mid-call (%s): %s",
            self._uuid,
            abnormal,
            reason,
            extra={"uuid": self._uuid, "reason": f"provider_failed:{abnormal}"},
        )
        self._end(f"provider_failed:{abnormal}")

    async def close(self) -> None:
        self._end("closed")  # first, so the connection's end is not counted as the provider's
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None  # the connection's message callback is this session's: do not keep each other
