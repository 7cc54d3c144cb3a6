"""The echo STS provider on an asyncio Protocol: the load benchmark's provider must not be its bottleneck.

On aiohttp the echo costs more CPU per message (a task wake-up per receive and per send; ``bench/provider_echo.py``
compares them), and with the load generator on the same core it saturated before the worker under test
did. Here the handshake and every message but audio are handled from ``data_received``; once a session is past
its handshake its socket moves to the compiled echo engine (``_echo.c``), which sends audio messages back
without waking Python and hands everything else to the session's protocol. The same port answers
``GET /health`` and ``GET /stats`` like the aiohttp provider; WebSocket upgrades are accepted on ``/`` and
``/speech-to-speech``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Final

import orjson

from avr_runtime.protocol import websocket as wire
from avr_runtime.reference.echo import EchoSession, Stats

try:
    from avr_runtime.reference import _echo
except ImportError:  # built without a C compiler: every message is echoed in Python
    _echo = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

ECHO_AVAILABLE: Final = _echo is not None

STS_PATHS: Final = ("/", "/speech-to-speech")


def _http(status: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "Connection: close\r\n\r\n").encode("latin-1") + body


class EchoPlane:
    """The compiled echo engine on an event loop, its count of echoed messages folded into ``stats``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stats: Stats) -> None:
        if _echo is None:
            raise RuntimeError("the compiled echo module is not installed")
        self._loop = loop
        self.engine = _echo.Echo(wire.DEFAULT_MAX_MESSAGE)
        loop.add_reader(self.engine.fileno(), self.engine.run)
        stats.sources.append(lambda: {"sts_audio": self.engine.take()})

    def adopt(self, protocol: StsServerProtocol, transport: asyncio.Transport) -> asyncio.Transport | None:
        """Move a session's socket here (nothing unwritten, nothing half parsed); its new transport, or None when
        it stays on the event loop."""
        fd = os.dup(transport.get_extra_info("socket").fileno())
        try:
            conn = self.engine.add(fd, protocol)
        except OSError as exc:
            os.close(fd)
            log.warning("sts session stays on the event loop: %s", exc)
            return None
        extra = {name: transport.get_extra_info(name) for name in ("peername", "sockname")}
        transport.set_protocol(asyncio.Protocol())  # closing it now ends nothing: the engine holds a duplicate
        transport.abort()
        return EchoTransport(conn, protocol, extra)

    def close(self) -> None:
        self._loop.remove_reader(self.engine.fileno())
        self.engine.close()


class EchoTransport(asyncio.Transport):
    """A session's transport once its socket is in the echo engine: writes queue behind the engine's own."""

    def __init__(self, conn: _echo.Conn, protocol: asyncio.BaseProtocol, extra: dict[str, Any]) -> None:
        super().__init__(extra)
        self._conn = conn
        self._protocol = protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._conn.write(bytes(data))

    def is_closing(self) -> bool:
        return not self._conn.is_open()

    def close(self) -> None:
        if self._conn.close():  # else the engine saw the end first and has reported it
            asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return self._conn.buffered()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


class StsServerProtocol(asyncio.Protocol):
    def __init__(self, stats: Stats, delay: float = 0.0, plane: EchoPlane | None = None) -> None:
        """``plane``: where sessions move after the handshake (not with a ``delay``: replies are held in Python)."""
        self.stats = stats
        self.delay = delay
        self.plane = plane if not delay else None
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
            if self._session is None:
                return
        if data and not self._on_frames(data):
            return
        transport, plane = self.transport, self.plane
        if plane is not None and transport is not None and self._parser.idle and not transport.get_write_buffer_size():
            self.plane = None  # offered once
            self.transport = plane.adopt(self, transport) or transport

    def _on_frames(self, data: bytes) -> bool:
        """Handle what ``data`` completes; False once the session is closing."""
        try:
            frames = self._parser.feed(data)
        except wire.WebSocketError as exc:
            self._close(exc.code)
            return False
        for opcode, payload in frames:
            if opcode == wire.TEXT:
                self._on_text(payload)
            elif opcode == wire.PING:
                self._send(wire.PONG, payload)
            elif opcode == wire.CLOSE:
                code, _ = wire.parse_close(payload)
                self._close(code or wire.NORMAL)
            if self.transport is None or self.transport.is_closing():
                return False
        return True

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
            if "traceparent" in request.headers:  # what tests of the worker's tracing look for
                self.stats[f"sts_traceparent:{request.headers['traceparent'].split('-')[1]}"] += 1
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
