"""The reference echo STS provider on both of its servers (Protocol and aiohttp), over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator

import echo_rig
import pytest
from aiohttp import web

from avr_runtime.protocol import sts
from avr_runtime.protocol import websocket as wire
from avr_runtime.reference.echo import Stats
from avr_runtime.reference.providers import STATS, build_app
from avr_runtime.reference.sts_server import StsServerProtocol
from avr_runtime.services.providers import wsclient


@pytest.fixture(params=["engine", "protocol", "aiohttp"])
async def provider(request: pytest.FixtureRequest) -> AsyncIterator[tuple[int, Stats]]:
    if request.param == "engine":
        async with echo_rig.server() as rig:
            yield rig.port, rig.stats
    elif request.param == "protocol":
        stats = Stats()
        server = await asyncio.get_running_loop().create_server(lambda: StsServerProtocol(stats), "127.0.0.1", 0)
        yield server.sockets[0].getsockname()[1], stats
        server.close()
        await server.wait_closed()
    else:
        app = build_app(("sts", "tts"))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield site._server.sockets[0].getsockname()[1], app[STATS]  # type: ignore[union-attr]
        await runner.cleanup()


class Inbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def __call__(self, opcode: int, payload: bytes) -> None:
        self.queue.put_nowait(payload)

    async def next(self) -> sts.Event:
        return sts.decode(await asyncio.wait_for(self.queue.get(), 5))


async def test_echo_dtmf_and_goodbye(provider: tuple[int, Stats]) -> None:
    port, stats = provider
    inbox = Inbox()
    conn = await wsclient.connect(f"ws://127.0.0.1:{port}/speech-to-speech?lang=en", inbox)
    conn.send(sts.encode_init("u-1").encode())
    conn.send(sts.encode_audio_bytes(b"\x01\x02" * 160))
    assert await inbox.next() == sts.Audio(b"\x01\x02" * 160)
    conn.send(sts.encode_dtmf("5").encode())
    assert await inbox.next() == sts.Transcript("user", "pressed 5")
    conn.send(sts.encode_dtmf("*").encode())
    assert await inbox.next() == sts.Interruption()
    conn.send(b"{not json")
    bad = await inbox.next()
    assert isinstance(bad, sts.ProviderError) and "bad message" in bad.message
    conn.send(sts.encode_dtmf("#").encode())
    assert await inbox.next() == sts.Transcript("agent", "Goodbye.")
    reason = await asyncio.wait_for(conn.closed, 5)
    assert reason.startswith("closed by peer (1000")
    assert stats["sts_sessions"] == 1 and stats["sts_init"] == 1 and stats["sts_audio"] == 1
    assert stats["sts_dtmf"] == 3 and stats["sts_query:lang=en"] == 1


def get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_health_stats_and_unknown_paths(provider: tuple[int, Stats]) -> None:
    port, stats = provider
    stats["seen"] = 3
    assert await asyncio.to_thread(get, f"http://127.0.0.1:{port}/health") == (200, {"status": "ok"})
    status, body = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/stats")
    assert status == 200 and body == {"seen": 3}
    status, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/nowhere")
    assert status == 404


async def test_protocol_server_refuses_bad_requests_and_unmasked_frames() -> None:
    stats = Stats()
    server = await asyncio.get_running_loop().create_server(lambda: StsServerProtocol(stats), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"HELLO\r\n\r\n")
        assert (await reader.read())[:24] == b"HTTP/1.1 400 Bad Request"
        writer.close()
        # an upgrade without a valid key
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        answer = await reader.read()
        assert answer.startswith(b"HTTP/1.1 400") and b"Sec-WebSocket-Key" in answer
        writer.close()
        # a client frame without a mask ends the session with 1002
        key = wire.new_key()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(wire.handshake_request(f"127.0.0.1:{port}", "/", key))
        head = await reader.readuntil(b"\r\n\r\n")
        assert wire.parse_handshake_response(head, key) == len(head)
        writer.write(wire.encode_frame(wire.TEXT, b"{}"))  # no mask: not allowed from a client
        rest = await reader.read()
        assert wire.FrameParser().feed(rest) == [(wire.CLOSE, wire.close_payload(wire.PROTOCOL_ERROR))]
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_delay_holds_replies_in_order() -> None:
    stats = Stats()
    server = await asyncio.get_running_loop().create_server(lambda: StsServerProtocol(stats, 0.05), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        inbox = Inbox()
        conn = await wsclient.connect(f"ws://127.0.0.1:{port}/", inbox)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(5):
            conn.send(sts.encode_audio_bytes(bytes([i]) * 320))
        got = [await inbox.next() for _ in range(5)]
        assert loop.time() - start >= 0.045
        assert got == [sts.Audio(bytes([i]) * 320) for i in range(5)]
        await conn.close()
    finally:
        server.close()
        await server.wait_closed()
