"""The echo STS provider on an asyncio Protocol: the load benchmark's provider must not be its bottleneck.

On aiohttp the echo costs 1.4-1.6x more CPU per message (``bench/provider_echo.py``: a task wake-up per
receive and per send), and with the load generator on the same core it saturated before the worker under test
did. Here a message is parsed and echoed from ``data_received``. The same port answers ``GET /health`` and
``GET /stats`` like the aiohttp provider; WebSocket upgrades are accepted on ``/`` and ``/speech-to-speech``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import orjson

from avr_runtime.protocol import websocket as wire
from avr_runtime.reference.echo import EchoSession, Stats

log = logging.getLogger(__name__)

STS_PATHS: Final = ("/", "/speech-to-speech")


def _http(status: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "Connection: close\r\n\r\n").encode("latin-1") + body


class StsServerProtocol(asyncio.Protocol):
    def __init__(self, stats: Stats, delay: float = 0.0) -> None:
        self.stats = stats
        self.delay = delay
        self.transport: asyncio.Transport | None = None
        self._head = b""
        self._session: EchoSession | None = None
        self._parser = wire.FrameParser(from_client=True)
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._session is None:
            data = self._read_head(data)
            if not data:
                return
        try:
            frames = self._parser.feed(data)
        except wire.WebSocketError as exc:
            self._close(exc.code)
            return
        for opcode, payload in frames:
            if opcode == wire.TEXT:
                self._on_text(payload)
            elif opcode == wire.PING:
                self._send(wire.PONG, payload)
            elif opcode == wire.CLOSE:
                code, _ = wire.parse_close(payload)
                self._close(code or wire.NORMAL)
            if self.transport is None or self.transport.is_closing():
                return

    def _read_head(self, data: bytes) -> bytes:
        assert self.transport is not None
        buf = self._head + data
        try:
            parsed = wire.parse_request(buf)
        except wire.HandshakeError as exc:
            self._reply_and_close("400 Bad Request", {"error": str(exc)})
            return b""
        if parsed is None:
            self._head = buf
            return b""
        request, size = parsed
        self._head = b""
        if request.wants_websocket and request.path in STS_PATHS:
            try:
                self.transport.write(wire.handshake_response(request))
            except wire.HandshakeError as exc:
                self._reply_and_close("400 Bad Request", {"error": str(exc)})
                return b""
            self._session = EchoSession(self.stats, request.query)
            return buf[size:]
        if request.method == "GET" and request.path == "/health":
            self._reply_and_close("200 OK", {"status": "ok"})
        elif request.method == "GET" and request.path == "/stats":
            self._reply_and_close("200 OK", dict(self.stats.counts))
        else:
            self._reply_and_close("404 Not Found", {"error": f"no route for {request.method} {request.path}"})
        return b""

    def _reply_and_close(self, status: str, body: object) -> None:
        assert self.transport is not None
        self._closing = True
        self.transport.write(_http(status, orjson.dumps(body)))
        self.transport.close()

    def _on_text(self, payload: bytes) -> None:
        assert self._session is not None
        replies, close = self._session.on_text(payload)
        if self.delay and replies:
            asyncio.get_running_loop().call_later(self.delay, self._deliver, replies, close)
        else:
            self._deliver(replies, close)

    def _deliver(self, replies: list[bytes], close: bool) -> None:
        for reply in replies:
            self._send(wire.TEXT, reply)
        if close:
            self._close(wire.NORMAL)

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(wire.encode_frame(opcode, payload))

    def _close(self, code: int) -> None:
        if not self._closing:
            self._send(wire.CLOSE, wire.close_payload(code))
            self._closing = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._session is not None:
            log.debug("sts session %s closed", self._session.call_uuid)
