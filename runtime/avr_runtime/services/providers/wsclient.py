"""A WebSocket client connection on an asyncio Protocol: messages in and out without task wake-ups.

Hot path: with aiohttp's client, sending and receiving STS messages was most of the worker's CPU per frame, spent
in the writer/reader task wake-ups and its generic frame handling. Here a send is
one synchronous ``transport.write`` and a received message is handed to a callback from ``data_received``.
Framing is ``protocol/websocket.py``. Pings are answered, the close handshake is honoured, writes that the kernel
cannot take are buffered up to a bound and then dropped oldest-first, never grown without limit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections import deque
from collections.abc import Callable
from typing import Final
from urllib.parse import unquote, urlsplit

from avr_runtime.protocol import websocket as wire

#: Messages held while the kernel's send buffer is full (the peer is not reading).
DEFAULT_BACKLOG: Final = 50
CLOSE_WAIT: Final = 1.0
_MASKER: Final = wire.Masker()  # one key pool for every connection: they all run on the event loop's thread


class WebSocketClosed(ConnectionError):
    pass


class WebSocketConnection(asyncio.Protocol):
    """``on_message(opcode, payload)`` gets every TEXT/BINARY message; ``closed`` resolves with a reason."""

    def __init__(
        self,
        host: str,
        target: str,
        on_message: Callable[[int, bytes], None],
        *,
        headers: dict[str, str] | None = None,
        max_message: int = wire.DEFAULT_MAX_MESSAGE,
        backlog: int = DEFAULT_BACKLOG,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._key = wire.new_key()
        self._request = wire.handshake_request(host, target, self._key, headers)
        self._on_message = on_message
        self._on_drop = on_drop
        self._parser = wire.FrameParser(max_message)
        self._masker = _MASKER
        self._handshake = b""
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[str] = loop.create_future()
        self._open = False
        self._close_sent = False
        self._paused = False
        self._pending: deque[bytes] = deque(maxlen=backlog)
        #: the code of the peer's close frame (``NO_STATUS`` for one without a code); None while it sent none
        self.peer_close_code: int | None = None

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self._open:
            data = self._read_handshake(data)
            if not data:
                return
        elif self._parser.idle and (payload := wire.single_text_frame(data)) is not None:
            self._on_message(wire.TEXT, payload)
            return
        try:
            messages = self._parser.feed(data)
        except wire.WebSocketError as exc:
            self._fail(exc.code, f"protocol_error: {exc}")
            return
        on_message = self._on_message
        for opcode, payload in messages:
            if opcode <= wire.BINARY:
                on_message(opcode, payload)
            elif opcode == wire.PING:
                self._write(wire.PONG, payload)
            elif opcode == wire.CLOSE:
                code, reason = wire.parse_close(payload)
                self.peer_close_code = wire.NO_STATUS if code is None else code
                if not self._close_sent:
                    self._write(wire.CLOSE, wire.close_payload(code or wire.NORMAL))
                    self._close_sent = True
                self._finish(f"closed by peer ({code or 'no code'}{': ' + reason if reason else ''})")
                return
            if self.transport is None or self.closed.done():  # a callback closed us
                return

    def _read_handshake(self, data: bytes) -> bytes:
        """Collect the HTTP answer; returns bytes that followed it (frames), or b"" while waiting."""
        buf = self._handshake + data
        try:
            size = wire.parse_handshake_response(buf, self._key)
        except wire.HandshakeError as exc:
            self._handshake = b""
            if not self.opened.done():
                self.opened.set_exception(exc)
            self.abort(f"handshake failed: {exc}")
            return b""
        if size is None:
            self._handshake = buf
            return b""
        self._handshake = b""
        self._open = True
        if not self.opened.done():
            self.opened.set_result(None)
        return buf[size:]

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f"connection lost: {exc}" if exc else "connection closed"
        if not self.opened.done():
            self.opened.set_exception(WebSocketClosed(detail))
        self._finish(detail)
        self.transport = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        pending = self._pending
        transport = self.transport
        while pending and not self._paused and transport is not None:
            transport.write(pending.popleft())

    # --- handing the socket to the C relay (server/relay.py) ---

    def detachable(self) -> bool:
        """Open, between messages, nothing held back (whether the call may move at all, a TLS provider's not,
        is ``handover.decide``'s)."""
        transport = self.transport
        return (
            self._open
            and not self._close_sent
            and not self._paused
            and not self._pending
            and self._parser.idle
            and transport is not None
            and not transport.is_closing()
            and not self.closed.done()
        )

    def relayed(self, transport: asyncio.Transport) -> None:
        """From now on the relay reads the socket (and calls ``data_received`` with what it does not handle)."""
        self.transport = transport

    # --- sending ---

    def send(self, payload: bytes, opcode: int = wire.TEXT) -> None:
        """Queue one message (text payloads are UTF-8 bytes). Never blocks; see the module docstring."""
        if self._close_sent or self.transport is None:
            raise WebSocketClosed("the connection is closing")
        frame = wire.encode_frame(opcode, payload, self._masker.key())
        if self._paused:
            if len(self._pending) == self._pending.maxlen and self._on_drop is not None:
                self._on_drop()
            self._pending.append(frame)
            return
        self.transport.write(frame)

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(wire.encode_frame(opcode, payload, self._masker.key()))

    async def close(self, code: int = wire.NORMAL) -> None:
        """Close handshake: send ours, wait up to CLOSE_WAIT for the peer's, then drop the connection."""
        if self.transport is None or self.closed.done():
            self.abort("closed")
            return
        if not self._close_sent:
            self._write(wire.CLOSE, wire.close_payload(code))
            self._close_sent = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), CLOSE_WAIT)
        self.abort("closed")

    # --- ending ---

    def _fail(self, code: int, reason: str) -> None:
        if not self._close_sent:
            self._write(wire.CLOSE, wire.close_payload(code))
            self._close_sent = True
        self._finish(reason)
        if self.transport is not None:
            self.transport.close()

    def _finish(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)

    def abort(self, reason: str) -> None:
        self._finish(reason)
        if self.transport is not None:
            self.transport.close()


def _ssl_for(scheme: str) -> ssl.SSLContext | None:
    return ssl.create_default_context() if scheme == "wss" else None


async def connect(
    url: str,
    on_message: Callable[[int, bytes], None],
    *,
    headers: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_message: int = wire.DEFAULT_MAX_MESSAGE,
    backlog: int = DEFAULT_BACKLOG,
    on_drop: Callable[[], None] | None = None,
) -> WebSocketConnection:
    """Open ``ws://`` or ``wss://`` ``url``; raises OSError (incl. HandshakeError) when it cannot. No timeout here:
    the caller's retry policy bounds each attempt."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    default_port = port == (443 if secure else 80)
    host_header = parts.netloc.rpartition("@")[2] if not default_port else parts.hostname
    if ":" in (parts.hostname or "") and default_port:  # IPv6 literal
        host_header = f"[{parts.hostname}]"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.username is not None:  # credentials in the URL, as browsers and aiohttp treat them
        token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
        headers = {"Authorization": f"Basic {token}", **(headers or {})}
    loop = asyncio.get_running_loop()
    context = ssl_context if ssl_context is not None else _ssl_for(parts.scheme)
    _, conn = await loop.create_connection(
        lambda: WebSocketConnection(
            host_header,
            target,
            on_message,
            headers=headers,
            max_message=max_message,
            backlog=backlog,
            on_drop=on_drop,
        ),
        parts.hostname,
        port,
        ssl=context,
        server_hostname=parts.hostname if context is not None else None,
    )
    try:
        await asyncio.shield(conn.opened)
    except BaseException:
        conn.abort("not opened")
        if conn.opened.done() and not conn.opened.cancelled():
            conn.opened.exception()  # retrieved: the caller gets the exception from here
        raise
    return conn
