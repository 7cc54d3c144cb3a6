"""Socket-level chaos: while one well-behaved call is relayed, other connections misbehave on the caller's side
(truncated, oversized, bursty, garbage, never reading) and a hostile provider answers other calls with broken
WebSocket frames. The good call keeps its paced, bit-exact echo; the worker stays up, within its memory, and
ends each bad call alone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from procs import ProviderFactory, WorkerFactory, free_port, http_json, paced_whole, sts_url
from webhook import receiver

from avr_runtime.client.audiosocket import place_call
from avr_runtime.protocol import audiosocket as wire
from avr_runtime.protocol import websocket as ws

#: What the hostile provider sends once its handshake is done, one per session, in turn.
BROKEN = [
    bytes([0xC1, 5]) + b"hello",  # a reserved bit set
    bytes([0x81, 127]) + struct.pack("!Q", 1 << 62),  # a length of 4 EiB
    bytes([0x81, 0x85]) + b"\x00\x00\x00\x00hello",  # masked, from a server
    bytes([0x89, 126, 0, 200]) + bytes(200),  # an oversized ping
    ws.encode_frame(ws.TEXT, b'{"type":"audio","audio":"!!not base64!!"}') + os.urandom(300),
    os.urandom(2000),
]


@contextlib.asynccontextmanager
async def hostile_provider() -> AsyncIterator[int]:
    """Answers the WebSocket handshake properly, then breaks the protocol."""
    turn = 0

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal turn
        head = await reader.readuntil(b"\r\n\r\n")
        parsed = ws.parse_request(head)
        assert parsed is not None
        writer.write(ws.handshake_response(parsed[0]))
        writer.write(BROKEN[turn % len(BROKEN)])
        turn += 1
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            while await reader.read(65536):
                pass
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@contextlib.asynccontextmanager
async def router(hostile_url: str) -> AsyncIterator[int]:
    """The call_initiated webhook sends calls marked hostile to the hostile provider."""

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        if body["type"] == "call_initiated" and body["payload"].get("hostile"):
            return web.json_response({"sts_url": hostile_url})
        return web.json_response({})

    async with receiver(hook) as port:
        yield port


async def raw(port: int, data: bytes, *, read: bool = True, close: bool = True) -> None:
    """One connection from a misbehaving caller."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if read:
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(3):
                    while await reader.read(65536):
                        pass
    except ConnectionError:
        pass
    finally:
        if close:
            writer.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def test_a_good_call_keeps_its_audio_through_hostile_callers_and_a_hostile_provider(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    async with hostile_provider() as hostile_port, router(f"ws://127.0.0.1:{hostile_port}") as hook_port:
        w = worker(sts_url=sts_url(sts), webhook_url=f"http://127.0.0.1:{hook_port}/hook")
        port = w.ports["audiosocket"]
        before = rss_kib(w.popen.pid)
        audio = speech * 2
        good = asyncio.create_task(place_call("127.0.0.1", port, audio))
        await asyncio.sleep(0.5)  # the good call is relayed by now

        def uuid_frame() -> bytes:
            return wire.uuid_frame(uuid.uuid4())

        frame = wire.audio_frame(bytes(range(1, 161)) * 2)
        stalled: list[asyncio.StreamWriter] = []

        async def never_reads() -> None:
            """A caller that sends a call and never reads what comes back."""
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.transport.set_write_buffer_limits(high=1 << 20)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            writer.write(uuid_frame() + frame * 50)
            stalled.append(writer)

        async def hostile_calls() -> None:
            for _ in range(len(BROKEN)):
                call_id = str(uuid.uuid4())
                status, _, _ = await asyncio.to_thread(
                    http_json, w.url("/call"), {"uuid": call_id, "payload": {"hostile": "1"}}
                )
                assert status == 200
                await place_call("127.0.0.1", port, speech[: 320 * 25], call_uuid=call_id, time_limit=20)

        chaos = [
            raw(port, uuid_frame() + frame[:100]),  # a frame cut short at close
            raw(port, uuid_frame() + b"\x10\xff\xff" + bytes(1000)),  # an absurd length
            raw(port, uuid_frame() + frame * 500),  # 10 s of audio at once
            raw(port, os.urandom(5000)),  # garbage before any uuid
            raw(port, uuid_frame() + b"\x42\x00\x00" + frame * 10),  # an unknown type
            raw(port, b"\x01\x00", read=False),  # half a header, then gone
            never_reads(),
            hostile_calls(),
        ]
        await asyncio.gather(*chaos)
        result = await good
        for writer in stalled:
            writer.close()
        await asyncio.sleep(1.0)
        assert w.popen.poll() is None, "the worker is still up"
        assert http_json(w.url("/health"))[0] == 200
        after = rss_kib(w.popen.pid)
    # the good call: whole, paced, its echo bit-exact
    assert result.hangup and result.errors == []
    assert paced_whole(result)
    padded = audio + bytes(-len(audio) % 320)
    sent = [padded[i : i + 320] for i in range(0, len(padded), 320)]
    back = [f for f in result.audio_frames if any(f)]
    frames = iter(sent)
    assert all(f in frames for f in back), "the echo in order, nothing invented"
    assert len(back) >= 0.9 * sum(1 for f in sent if any(f))
    # every bad call ended alone, with its reason
    assert w.metric("avr_protocol_errors_total", {"leg": "audiosocket", "reason": "truncated"}) >= 1
    assert w.metric("avr_protocol_errors_total", {"leg": "audiosocket", "reason": "bad_length"}) >= 1
    assert w.metric("avr_protocol_errors_total", {"leg": "audiosocket", "reason": "unknown_type"}) >= 1
    assert w.metric("avr_provider_errors_total", {"provider": "sts", "reason": "protocol_error"}) >= len(BROKEN) - 2
    assert w.metric("avr_active_calls") == 0
    assert w.metric("avr_call_objects") == 0
    assert after - before < 30 * 1024, f"RSS grew by {after - before} KiB"


FRAME = wire.audio_frame(bytes(range(1, 161)) * 2)


def new_call() -> bytes:
    return wire.uuid_frame(uuid.uuid4())


BAD_CALLERS: dict[str, Callable[[], bytes]] = {
    "cut short": lambda: new_call() + FRAME[:100],
    "absurd length": lambda: new_call() + b"\x10\xff\xff" + bytes(1000),
    "burst": lambda: new_call() + FRAME * 500,
    "garbage": lambda: os.urandom(5000),
    "unknown type": lambda: new_call() + b"\x42\x00\x00" + FRAME * 10,
    "half a header": lambda: b"\x01\x00",
}


@pytest.mark.parametrize("case", list(BAD_CALLERS))
async def test_each_bad_caller_s_call_ends_and_is_freed(
    case: str, provider: ProviderFactory, worker: WorkerFactory
) -> None:
    """Freed by reference counting as it ends, whatever broke it (a call ended in the same read as its
    uuid leaves a cancelled provider connection behind, whose traceback must not hold the call)."""
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    await raw(w.ports["audiosocket"], BAD_CALLERS[case](), read=case != "half a header")
    await asyncio.sleep(1.0)
    assert (w.metric("avr_active_calls"), w.metric("avr_call_objects")) == (0, 0)


async def test_calls_whose_provider_is_down_end_and_are_freed(worker: WorkerFactory, speech: bytes) -> None:
    w = worker(sts_url=f"ws://127.0.0.1:{free_port()}", max_retries=0, connection_timeout=500)
    for _ in range(3):
        result = await place_call("127.0.0.1", w.ports["audiosocket"], speech[: 320 * 25], time_limit=20)
        assert result.hangup
    await asyncio.sleep(0.3)
    assert w.metric("avr_calls_ended_total", {"reason": "provider_unavailable"}) == 3
    assert (w.metric("avr_active_calls"), w.metric("avr_call_objects")) == (0, 0)


async def test_calls_whose_provider_breaks_the_protocol_end_and_are_freed(worker: WorkerFactory, speech: bytes) -> None:
    async with hostile_provider() as port:
        w = worker(sts_url=f"ws://127.0.0.1:{port}")
        left = []
        for _ in BROKEN:
            result = await place_call("127.0.0.1", w.ports["audiosocket"], speech[: 320 * 25], time_limit=20)
            assert result.hangup
            await asyncio.sleep(0.3)
            left.append(w.metric("avr_call_objects"))
    assert left == [0] * len(BROKEN)
    assert w.metric("avr_calls_ended_total", {"reason": "provider_protocol_error"}) == len(BROKEN)
