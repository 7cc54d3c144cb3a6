"""The WebSocket client connection against a real WebSocket server (aiohttp) over loopback sockets."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from avr_runtime.protocol import websocket as wire
from avr_runtime.services.providers import wsclient

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def not_found(_request: web.Request) -> web.Response:
    return web.Response(status=404, text="no")


async def serve(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/ws", handler)
    app.router.add_get("/plain", not_found)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


class Inbox:
    def __init__(self) -> None:
        self.messages: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()

    def __call__(self, opcode: int, payload: bytes) -> None:
        self.messages.put_nowait((opcode, payload))

    async def next(self) -> tuple[int, bytes]:
        return await asyncio.wait_for(self.messages.get(), 5)


@pytest.fixture
async def echo() -> AsyncIterator[tuple[int, list[str]]]:
    """An echo server that records what it saw, including the request's query and headers."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        seen.append(f"query={request.query_string} auth={request.headers.get('Authorization', '')}")
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.ping(b"are-you-there")
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                if msg.data == "close-please":
                    await ws.close(code=4001, message=b"as asked")
                    break
                await ws.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is aiohttp.WSMsgType.PONG:
                seen.append(f"pong={msg.data.decode()}")
        return ws

    runner, port = await serve(handler)
    yield port, seen
    await runner.cleanup()


async def test_messages_both_ways_ping_answered_and_url_parts_sent(echo: tuple[int, list[str]]) -> None:
    port, seen = echo
    inbox = Inbox()
    conn = await wsclient.connect(f"ws://user:p%40ss@127.0.0.1:{port}/ws?uuid=abc&x=1", inbox)
    conn.send(b'{"type":"audio","audio":"AAAA"}')
    conn.send(bytes(70_000), wire.BINARY)  # 64-bit length frame
    conn.send("héllo".encode())
    assert await inbox.next() == (wire.TEXT, b'{"type":"audio","audio":"AAAA"}')
    assert await inbox.next() == (wire.BINARY, bytes(70_000))
    assert await inbox.next() == (wire.TEXT, "héllo".encode())
    await conn.close()
    assert conn.closed.done()
    assert seen[0] == "query=uuid=abc&x=1 auth=Basic dXNlcjpwQHNz"  # user:p@ss
    assert "pong=are-you-there" in seen


async def test_server_close_is_reported_with_its_code(echo: tuple[int, list[str]]) -> None:
    port, _ = echo
    conn = await wsclient.connect(f"ws://127.0.0.1:{port}/ws", Inbox())
    conn.send(b"close-please")
    reason = await asyncio.wait_for(conn.closed, 5)
    assert reason == "closed by peer (4001: as asked)"
    with pytest.raises(wsclient.WebSocketClosed):
        conn.send(b"too late")


async def test_refused_upgrade_and_closed_port_raise_connection_errors(echo: tuple[int, list[str]]) -> None:
    port, _ = echo
    with pytest.raises(wire.HandshakeError, match="404"):
        await wsclient.connect(f"ws://127.0.0.1:{port}/plain", Inbox())
    with socket_closed_port() as closed_port, pytest.raises(OSError):
        await wsclient.connect(f"ws://127.0.0.1:{closed_port}/", Inbox())
    with pytest.raises(ValueError, match="ws://"):
        await wsclient.connect(f"http://127.0.0.1:{port}/ws", Inbox())


class socket_closed_port:  # noqa: N801 - used as a context manager
    """A port nothing listens on (bound, then released)."""

    def __enter__(self) -> int:
        import socket  # noqa: PLC0415

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        return None


async def test_broken_server_frames_end_the_connection_with_a_protocol_error() -> None:
    """A raw server that answers the handshake, then sends a masked frame (forbidden from servers)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {wire.accept_for(key)}\r\n\r\n".encode()
            + bytes([0x81, 0x82])
            + b"abcdxx"
        )
        await writer.drain()
        received.append(await reader.read(100))
        writer.close()

    received: list[bytes] = []
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        conn = await wsclient.connect(f"ws://127.0.0.1:{port}/", Inbox())
        reason = await asyncio.wait_for(conn.closed, 5)
        assert reason.startswith("protocol_error") and "masked" in reason
        await asyncio.sleep(0.05)
        # the client said why: a close frame with code 1002
        opcode, fin, body = received[0][0] & 0x0F, received[0][0] & 0x80, received[0]
        assert (opcode, bool(fin)) == (wire.CLOSE, True)
        assert wire.apply_mask(body[6:8], body[2:6]) == (1002).to_bytes(2, "big")
    finally:
        server.close()
        await server.wait_closed()


async def test_a_peer_that_does_not_read_gets_a_bounded_backlog() -> None:
    stalled = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await stalled.wait()  # never reads
        return ws

    runner, port = await serve(handler)
    drops: list[int] = []
    try:
        conn = await wsclient.connect(f"ws://127.0.0.1:{port}/ws", Inbox(), backlog=5, on_drop=lambda: drops.append(1))
        chunk = bytes(65_536)
        sent = 0
        while not conn._paused and sent < 20_000:
            conn.send(chunk, wire.BINARY)
            sent += 1
        assert conn._paused, "the kernel buffers never filled"
        for _ in range(20):
            conn.send(chunk, wire.BINARY)
        assert len(conn._pending) == 5
        assert len(drops) == 15
        await conn.close()  # the peer never answers the close: given up after the close wait
        assert conn.transport is None or conn.transport.is_closing()
    finally:
        stalled.set()
        await runner.cleanup()


async def test_wss_with_a_trusted_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data.upper())
        return ws

    runner, port = await serve(handler, server_ctx)
    try:
        inbox = Inbox()
        conn = await wsclient.connect(f"wss://localhost:{port}/ws", inbox, ssl_context=client_ctx)
        conn.send(b"secure")
        assert await inbox.next() == (wire.TEXT, b"SECURE")
        await conn.close()
        # without trusting the CA, the connection is refused
        with pytest.raises(ssl.SSLError):
            await wsclient.connect(f"wss://localhost:{port}/ws", Inbox())
    finally:
        await runner.cleanup()
