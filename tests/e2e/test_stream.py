"""The WebSocket stream leg with real Opus (libopus) against a real worker and echo provider."""

from __future__ import annotations

import asyncio
import itertools
import socket
import statistics

import aiohttp
import numpy as np
import orjson
from procs import ProviderFactory, WorkerFactory, sts_url

from avr_runtime.audio.opus import OpusDecoder, OpusEncoder
from avr_runtime.audio.resample import Upsampler


def energy(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


async def test_opus_client_gets_its_speech_back_paced(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    speech16 = Upsampler().process(speech)
    enc, dec = OpusEncoder(16000, 1, 16000), OpusDecoder(16000, 1)
    frame = enc.bytes_per_frame
    packets = [enc.encode(speech16[i : i + frame]) for i in range(0, len(speech16) - frame + 1, frame)]
    received: list[tuple[float, bytes]] = []
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session, session.ws_connect(w.url("/stream?codec=opus")) as ws:
        start = await ws.receive_json()
        assert start["type"] == "start" and start["codec"] == "opus" and start["sampleRate"] == 16000

        async def reader() -> None:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    received.append((loop.time(), msg.data))

        task = asyncio.create_task(reader())
        t0 = loop.time()
        for i, packet in enumerate(packets + [enc.encode(bytes(frame))] * 25):
            await ws.send_bytes(packet)
            await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - loop.time()))
        await ws.send_str(orjson.dumps({"type": "hangup"}).decode())
        await asyncio.wait_for(task, 5)
    assert len(received) >= len(packets)
    pcm_back = b"".join(dec.decode(p) for _, p in received)
    assert all(len(dec.decode(p)) == frame for _, p in received[:5]), "20 ms Opus frames"
    gaps = [(b[0] - a[0]) * 1000 for a, b in itertools.pairwise(received)]
    assert 19.0 <= statistics.median(gaps) <= 21.0
    # the echoed speech is there: loud where the speech was, not silence
    assert energy(pcm_back) > 0.3 * energy(speech16)
    assert w.metric("avr_calls_ended_total", {"reason": "hangup"}) == 1


async def test_bad_opus_packet_ends_only_that_stream(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    async with aiohttp.ClientSession() as session:
        good = await session.ws_connect(w.url("/stream?codec=pcm16"))
        bad = await session.ws_connect(w.url("/stream?codec=opus"))
        await good.receive_json()
        await bad.receive_json()
        await bad.send_bytes(b"\xff" * 5000)  # larger than any Opus packet
        hangup = None
        async for msg in bad:
            if msg.type is aiohttp.WSMsgType.TEXT:
                hangup = orjson.loads(msg.data)
        assert hangup is not None and hangup["reason"].startswith("protocol_error")
        # the other stream is unaffected
        for _ in range(25):
            await good.send_bytes(bytes(640))
            await asyncio.sleep(0.02)
        frames = 0
        while frames < 20:
            msg = await asyncio.wait_for(good.receive(), 2)
            frames += msg.type is aiohttp.WSMsgType.BINARY
        await good.close()
    assert w.metric("avr_protocol_errors_total", {"leg": "stream", "reason": "bad_audio"}) == 1


async def test_slow_stream_client_is_bounded(provider: ProviderFactory, worker: WorkerFactory) -> None:
    """A client that never reads loses the oldest frames; the worker's queue stays at its bound."""
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), stream_queue_frames=10)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills fast
    sock.connect(("127.0.0.1", w.ports["http"]))
    _reader, writer = await asyncio.open_connection(sock=sock)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    writer.write(
        (
            "GET /stream?codec=pcm16 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    # never read: the socket buffers fill, then the worker must drop instead of queueing without bound
    dropped = 0.0
    for _ in range(100):
        await asyncio.sleep(0.2)
        dropped = w.metric("avr_frames_dropped_total", {"reason": "backpressure"})
        if dropped:
            break
    writer.close()
    assert dropped > 0
