"""The reference provider's compiled echo engine (reference/_echo.c) over real loopback sockets: what it echoes
itself, what it hands to the session's Python protocol, in which order, and how it treats a client that does
not read."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import weakref
from typing import Any, cast

import pytest
from echo_rig import server
from relay_rig import until

from avr_runtime.protocol import sts
from avr_runtime.protocol import websocket as wire

OUT_CAP = 1024 * 1024  # _echo.c
READ_CHUNK = 64 * 1024  # _echo.c


class Client:
    """A raw WebSocket client: frames are written as given, replies parsed as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = wire.FrameParser()
        self.frames: list[tuple[int, bytes]] = []

    @classmethod
    async def open(cls, port: int, rcvbuf: int = 0) -> Client:
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = wire.new_key()
        writer.write(wire.handshake_request(f"127.0.0.1:{port}", "/", key))
        head = await reader.readuntil(b"\r\n\r\n")
        assert wire.parse_handshake_response(head, key) == len(head)
        return cls(reader, writer)

    def send(self, payload: bytes, opcode: int = wire.TEXT, fin: bool = True) -> None:
        self.writer.write(frame(opcode, payload, fin))

    async def next(self) -> tuple[int, bytes]:
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            assert data, "the provider closed the connection"
            self.frames += self.parser.feed(data)
        return self.frames.pop(0)

    async def rest(self) -> list[tuple[int, bytes]]:
        """Every frame until the provider closes the connection."""
        out, self.frames = self.frames, []
        while data := await asyncio.wait_for(self.reader.read(65536), 5):
            out += self.parser.feed(data)
        return out

    def close(self) -> None:
        self.writer.close()


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame; ``fin=False`` starts or continues a fragmented message."""
    data = wire.encode_frame(opcode, payload, os.urandom(4))
    return data if fin else bytes([data[0] & 0x7F]) + data[1:]


def audio(n: int, seed: int = 0) -> bytes:
    return sts.encode_audio_bytes(bytes((seed + i) % 256 for i in range(n)))


async def test_session_moves_to_the_engine_and_audio_comes_back_identical() -> None:
    async with server() as rig:
        client = await Client.open(rig.port)
        assert await until(lambda: rig.plane.engine.active() == 1)
        client.send(sts.encode_init("u-1").encode())
        # 2-, 4- and 10-byte reply headers; and the next message's echo is not held behind a large one
        messages = [audio(20), audio(320, 1), audio(3000, 2), audio(60000, 3), audio(320, 4)]
        for m in messages:
            client.send(m)
        for m in messages:
            assert await client.next() == (wire.TEXT, m)
        assert rig.stats["sts_init"] == 1 and rig.stats["sts_audio"] == len(messages)
        assert rig.plane.engine.take() == 0, "counted into stats once"
        client.close()
        assert await until(lambda: rig.plane.engine.active() == 0)


async def test_messages_split_and_batched_arbitrarily() -> None:
    async with server() as rig:
        client = await Client.open(rig.port)
        messages = [audio(320, i) for i in range(20)]
        data = b"".join(frame(wire.TEXT, m) for m in messages)
        for cut in (1, 7, 300, 4096):  # one byte at a time, then pieces across frame boundaries
            for pos in range(0, len(data), cut):
                client.writer.write(data[pos : pos + cut])
                await client.writer.drain()
                if cut == 1 and pos % 97 == 0:
                    await asyncio.sleep(0)
            for m in messages:
                assert await client.next() == (wire.TEXT, m)
        client.close()


async def test_everything_else_reaches_the_session_in_order() -> None:
    async with server() as rig:
        client = await Client.open(rig.port)
        a, b, c = audio(320, 1), audio(320, 2), audio(320, 3)
        client.writer.write(
            frame(wire.TEXT, a)
            + frame(wire.TEXT, sts.encode_dtmf("5").encode())
            + frame(wire.TEXT, b)
            + frame(wire.PING, b"are you there")
            + frame(wire.TEXT, b"{not json")
            + frame(wire.TEXT, c)
        )
        assert await client.next() == (wire.TEXT, a)
        _, payload = await client.next()
        assert sts.decode(payload) == sts.Transcript("user", "pressed 5")
        assert await client.next() == (wire.TEXT, b)
        assert await client.next() == (wire.PONG, b"are you there")
        _, payload = await client.next()
        event = sts.decode(payload)
        assert isinstance(event, sts.ProviderError) and "bad message" in event.message
        assert await client.next() == (wire.TEXT, c)
        # a fragmented audio message is the session's: joined and echoed whole, and the one after it still is
        d, e = audio(320, 4), audio(320, 5)
        client.writer.write(
            frame(wire.TEXT, d[:100], fin=False)
            + frame(wire.PING, b"mid")  # a control frame may come between fragments
            + frame(wire.CONTINUATION, d[100:200], fin=False)
            + frame(wire.CONTINUATION, d[200:])
            + frame(wire.TEXT, e)
        )
        assert await client.next() == (wire.PONG, b"mid")
        assert await client.next() == (wire.TEXT, d)
        assert await client.next() == (wire.TEXT, e)
        assert rig.stats["sts_audio"] == 5 and rig.stats["sts_dtmf"] == 1
        # the close handshake
        client.send(wire.close_payload(wire.NORMAL), wire.CLOSE)
        assert await client.rest() == [(wire.CLOSE, wire.close_payload(wire.NORMAL))]
        client.close()


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (wire.encode_frame(wire.TEXT, b'{"type":"audio","audio":""}'), wire.PROTOCOL_ERROR),  # not masked
        (bytes([0xC1]) + frame(wire.TEXT, b"{}")[1:], wire.PROTOCOL_ERROR),  # a reserved bit
        (frame(0x3, b"x"), wire.PROTOCOL_ERROR),  # an unknown opcode
        (frame(wire.PING, b"x", fin=False), wire.PROTOCOL_ERROR),  # a fragmented control frame
        (bytes([0x81, 0xFF]) + (wire.DEFAULT_MAX_MESSAGE + 1).to_bytes(8, "big") + b"\0" * 4, wire.TOO_BIG),
        (frame(wire.CONTINUATION, b"x"), wire.PROTOCOL_ERROR),  # nothing to continue
    ],
    ids=["unmasked", "reserved-bit", "unknown-opcode", "fragmented-ping", "too-big", "lone-continuation"],
)
async def test_a_frame_that_breaks_the_protocol_ends_only_its_session(bad: bytes, code: int) -> None:
    async with server() as rig:
        other, client = await Client.open(rig.port), await Client.open(rig.port)
        assert await until(lambda: rig.plane.engine.active() == 2)
        first = audio(320, 1)
        client.writer.write(frame(wire.TEXT, first) + bad + frame(wire.TEXT, audio(320, 2)))
        assert await client.rest() == [(wire.TEXT, first), (wire.CLOSE, wire.close_payload(code))]
        assert await until(lambda: rig.plane.engine.active() == 1)
        later = audio(320, 3)
        other.send(later)
        assert await other.next() == (wire.TEXT, later)
        client.close()
        other.close()


async def test_a_client_that_does_not_read_is_not_buffered_without_bound() -> None:
    async with server() as rig:
        client = await Client.open(rig.port, rcvbuf=64 * 1024)
        assert await until(lambda: rig.plane.engine.active() == 1)
        transport = rig.sessions[0].transport
        assert transport is not None
        message = audio(4000)  # a 5.4 KB echo
        sent = 0
        blocked = False
        while sent < 8000:  # 43 MB at most: far above what the kernel buffers and the engine's cap hold
            for _ in range(50):
                client.send(message)
            sent += 50
            try:
                await asyncio.wait_for(client.writer.drain(), 0.5)
            except TimeoutError:
                blocked = True  # the provider stopped reading from us
                break
        assert blocked, "the engine kept reading from a client that does not read"
        # Reading stops once the cap is passed, but the frames of the read that passed it are all echoed: at
        # most one read's worth, plus the message that straddled the read before it.
        assert transport.get_write_buffer_size() <= OUT_CAP + READ_CHUNK + len(message) + 10
        got = 0
        while got < sent:
            assert await client.next() == (wire.TEXT, message)
            got += 1
        assert rig.stats["sts_audio"] == sent
        client.close()


async def test_a_delayed_provider_keeps_its_sessions_in_python() -> None:
    async with server(delay=0.02) as rig:
        client = await Client.open(rig.port)
        m = audio(320)
        client.send(m)
        assert await client.next() == (wire.TEXT, m)
        assert rig.plane.engine.active() == 0 and rig.stats["sts_audio"] == 1
        client.close()


async def test_a_session_that_ended_in_the_engine_is_freed() -> None:
    """The engine's connection, the session's protocol and its transport refer to each other: once the session is
    over they must all go, or a provider that serves calls for weeks grows by each of them."""
    async with server() as rig:
        client = await Client.open(rig.port)
        client.send(sts.encode_init("freed").encode())
        client.send(b'{"type":"audio","audio":"AAAA"}')
        assert await client.next() == (wire.TEXT, b'{"type":"audio","audio":"AAAA"}')
        assert await until(lambda: rig.plane.engine.active() == 1)
        session = rig.sessions[0]
        refs = [weakref.ref(session), weakref.ref(cast(Any, session.transport))]
        client.close()
        assert await until(lambda: rig.plane.engine.active() == 0)
        await asyncio.sleep(0.05)
        rig.sessions.clear()
        del session
        gc.collect()
        assert [r() for r in refs] == [None, None]
