"""The WebSocket stream leg with real Opus (libopus) against a real worker and echo provider."""

from __future__ import annotations

import asyncio
import itertools
import socket
import statistics

import aiohttp
import numpy as np
import orjson
import pytest
from procs import Proc, ProviderFactory, WorkerFactory, http_json, sts_url

from avr_runtime.audio.opus import OpusDecoder, OpusEncoder
from avr_runtime.audio.resample import Upsampler


def energy(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def opus_packets(speech: bytes) -> tuple[list[bytes], OpusEncoder]:
    """The speech as a 16 kHz client encodes it, 20 ms a packet; and that encoder, for more."""
    speech16 = Upsampler().process(speech)
    enc = OpusEncoder(16000, 1, 16000)
    frame = enc.bytes_per_frame
    return [enc.encode(speech16[i : i + frame]) for i in range(0, len(speech16) - frame + 1, frame)], enc


async def send_paced(ws: aiohttp.ClientWebSocketResponse, packets: list[bytes]) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i, packet in enumerate(packets):
        await ws.send_bytes(packet)
        await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - loop.time()))


def logged_ends(proc: Proc) -> list[dict[str, object]]:
    records = [orjson.loads(line) for line in proc.log.splitlines() if line.startswith("{")]
    return [r for r in records if r.get("message") == "call ended"]


@pytest.mark.parametrize("fast_path", ["true", "false"])
async def test_opus_client_gets_its_speech_back_paced(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes, fast_path: str
) -> None:
    """On the compiled data plane (moved there once steady) and in Python: the same speech back, paced, DTMF."""
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts), fast_path=fast_path)
    packets, enc = opus_packets(speech)
    tail = [enc.encode(bytes(enc.bytes_per_frame))] * 25
    dec = OpusDecoder(16000, 1)
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
        await send_paced(ws, packets + tail)
        relayed = await asyncio.to_thread(w.metric, "avr_calls_relayed_total")
        assert relayed == (1 if fast_path == "true" else 0)
        await ws.send_str(orjson.dumps({"type": "dtmf", "digit": "5"}).decode())
        await send_paced(ws, tail)
        await ws.send_str(orjson.dumps({"type": "hangup"}).decode())
        await asyncio.wait_for(task, 5)
    assert len(received) >= len(packets)
    pcm_back = b"".join(dec.decode(p) for _, p in received)
    assert all(len(dec.decode(p)) == enc.bytes_per_frame for _, p in received[:5]), "20 ms Opus frames"
    gaps = [(b[0] - a[0]) * 1000 for a, b in itertools.pairwise(received)]
    assert 19.0 <= statistics.median(gaps) <= 21.0
    assert sum(1 for g in gaps if g < 10.0) <= len(gaps) * 0.02, "no bursts"
    # the echoed speech is there: loud where the speech was, not silence
    assert energy(pcm_back) > 0.3 * energy(Upsampler().process(speech))
    _, stats, _ = http_json(sts.url("/stats"))
    sent = len(packets) + 2 * len(tail)
    assert stats["sts_audio"] == sent, "every packet reached the provider, decoded"
    assert stats["sts_dtmf"] == 1
    (ended,) = logged_ends(w)
    assert ended["reason"] == "hangup" and ended["frames_in"] == sent
    assert w.metric("avr_calls_ended_total", {"reason": "hangup"}) == 1
    assert w.metric("avr_active_calls") == 0
    assert w.handovers() == {"moved" if fast_path == "true" else "fast_path_off": 1.0}
    for _ in range(40):  # the handler returns once the client has closed
        if w.metric("avr_call_objects") == 0:
            break
        await asyncio.sleep(0.05)
    assert w.metric("avr_call_objects") == 0, "the ended stream call was freed"


async def test_a_relayed_stream_answers_pings_and_ends_on_the_client_s_close(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    packets, _ = opus_packets(speech)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(w.url("/stream?codec=opus"), autoping=False)
        await ws.receive_json()
        await send_paced(ws, packets[:50])
        assert await asyncio.to_thread(w.metric, "avr_calls_relayed_total") == 1
        await ws.ping(b"still there?")
        for _ in range(200):
            msg = await asyncio.wait_for(ws.receive(), 2)
            if msg.type is aiohttp.WSMsgType.PONG:
                break
        assert msg.type is aiohttp.WSMsgType.PONG and msg.data == b"still there?"
        await ws.close()
        assert ws.close_code == 1000
    for _ in range(100):
        if w.metric("avr_active_calls") == 0:
            break
        await asyncio.sleep(0.05)
    assert w.metric("avr_active_calls") == 0
    assert [e["reason"] for e in logged_ends(w)] == ["disconnected"]


@pytest.mark.parametrize(
    ("packet", "lead"),
    [(b"\xff" * 5000, 0), (b"\x03", 0), (b"\x03", 50)],
    ids=["too-large", "undecodable", "undecodable-after-handover"],
)
async def test_bad_opus_packet_ends_only_that_stream(
    provider: ProviderFactory, worker: WorkerFactory, speech: bytes, packet: bytes, lead: int
) -> None:
    sts = provider("sts")
    w = worker(sts_url=sts_url(sts))
    packets, _ = opus_packets(speech)
    async with aiohttp.ClientSession() as session:
        good = await session.ws_connect(w.url("/stream?codec=pcm16"))
        bad = await session.ws_connect(w.url("/stream?codec=opus"))
        await good.receive_json()
        await bad.receive_json()
        await send_paced(bad, packets[:lead])
        relayed = await asyncio.to_thread(w.metric, "avr_calls_relayed_total")
        assert relayed == (1 if lead else 0)
        await bad.send_bytes(packet)
        for good_packet in packets[lead : lead + 10]:  # what follows the bad packet is not audio any more
            await bad.send_bytes(good_packet)
        hangup = None
        async for msg in bad:
            if msg.type is aiohttp.WSMsgType.TEXT:
                hangup = orjson.loads(msg.data)
        assert hangup is not None and hangup["reason"] == "protocol_error:bad_audio"
        _, stats, _ = await asyncio.to_thread(http_json, sts.url("/stats"))
        assert stats.get("sts_audio", 0) == lead, "only the packets before the bad one reached the provider"
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
    assert w.popen.poll() is None


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
