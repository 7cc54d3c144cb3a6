"""The compiled data plane with an Opus stream client as the caller (server/_relay.c, server/stream.py).

The rig is test_relay.py's, with a WebSocket client in place of Asterisk: it sends masked frames carrying Opus
packets and reads the worker's unmasked binary frames. The engine encodes and decodes with the call's own libopus
encoder and decoder (StreamCodec.relay_options), so what it sends is checked against StreamCodec doing the same
work in Python, packet for packet.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import statistics
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import orjson
import pytest
from relay_rig import (
    BOUNDS,
    MAX_MESSAGE,
    PERIOD,
    Peer,
    ProviderPeer,
    Recorder,
    add_relay,
    audio_message,
    close_rig,
    server_frame,
    settle,
    tcp_pair,
    until,
)

from avr_runtime.audio.opus import MAX_PACKET, OpusDecoder, OpusEncoder
from avr_runtime.config import Codec, Settings
from avr_runtime.protocol import websocket as ws
from avr_runtime.server import _relay
from avr_runtime.server.stream import MAX_MESSAGE as STREAM_MAX_MESSAGE
from avr_runtime.server.stream import StreamCodec

if TYPE_CHECKING:
    from avr_runtime.server._relay import CallerSide
    from avr_runtime.server._relay import Engine as EngineType
    from avr_runtime.server._relay import Relay as RelayType

Engine = _relay.Engine
CLIENT = _relay.AS
KEY = b"\x5a\xa5\x3c\xc3"
FRAME = 320


def tone(hz: float, frames: int, rate: int = 8000, amplitude: float = 6000.0) -> list[bytes]:
    n = rate // 50
    t = np.arange(n * frames) / rate
    samples = (amplitude * np.sin(2 * np.pi * hz * t)).astype("<i2")
    return [samples[i * n : (i + 1) * n].tobytes() for i in range(frames)]


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """A frame as a WebSocket client sends it, built from RFC 6455 rather than with the module under test."""
    n = len(payload)
    first = (0x80 if fin else 0) | rsv | opcode
    bit = 0x80 if masked else 0
    if n < 126:
        header = bytes([first, bit | n])
    elif n < 65536:
        header = bytes([first, bit | 126]) + struct.pack("!H", n)
    else:
        header = bytes([first, bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return header + payload
    return header + KEY + bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))


class ClientPeer(Peer):
    """Reads the worker's frames (unmasked, as a server sends them), each stamped with its arrival."""

    def __init__(self) -> None:
        super().__init__()
        self.parser = ws.FrameParser()
        self.messages: list[tuple[int, bytes]] = []
        self.arrivals: list[float] = []

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        super().data_received(data)
        for message in self.parser.feed(data):
            self.messages.append(message)
            self.arrivals.append(now)

    @property
    def packets(self) -> list[bytes]:
        return [p for op, p in self.messages if op == ws.BINARY]


def provider_audio(provider: ProviderPeer) -> bytes:
    """The PCM of every STS audio message the provider got, joined."""
    out = b""
    for frame in provider.frames:
        message = orjson.loads(frame.payload)
        assert message["type"] == "audio"
        out += base64.b64decode(message["audio"])
    return out


@dataclass
class StreamRig:
    engine: EngineType
    relay: RelayType
    client: ClientPeer
    provider: ProviderPeer
    client_proto: Recorder
    ws_proto: Recorder
    codec: StreamCodec


MakeStreamRig = Callable[..., Awaitable[StreamRig]]


@pytest.fixture(params=[0.0, 0.001], ids=["woken", "polled"])
async def make_rig(request: pytest.FixtureRequest) -> AsyncIterator[MakeStreamRig]:
    loop = asyncio.get_running_loop()
    made: list[StreamRig] = []

    async def make(
        *,
        start_in: float = 0.0,
        settings: Settings | None = None,
        codec: StreamCodec | None = None,
        out_cap: int | None = None,
        bufsize: int = 0,
    ) -> StreamRig:
        engine = Engine(BOUNDS, MAX_MESSAGE, request.param)
        loop.add_reader(engine.fileno(), engine.run)
        client_mine, client_remote = tcp_pair(bufsize)
        ws_mine, ws_remote = tcp_pair()
        _, client = await loop.create_connection(ClientPeer, sock=client_remote)
        _, provider = await loop.create_connection(ProviderPeer, sock=ws_remote)
        codec = codec or StreamCodec(Codec.OPUS, settings or Settings())
        options = codec.relay_options(50)
        if out_cap is not None:
            options["out_cap"] = out_cap
        client_proto, ws_proto = Recorder(), Recorder()
        now = time.monotonic()
        relay = add_relay(
            engine,
            cast("CallerSide", {"fd": client_mine.detach(), "protocol": client_proto, **options}),
            ws_mine.detach(),
            ws_proto,
            next_slot=now + start_in,
            earliest=now,
            capacity=500,
            drop_newest=False,
            margin=0.004,
            max_slew=0.002,
        )
        rig = StreamRig(engine, relay, client, provider, client_proto, ws_proto, codec)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        close_rig(rig.engine, rig.client, rig.provider)


# --- client -> provider ---


async def test_client_packets_reach_the_provider_decoded_to_the_call_s_8_khz(make_rig: MakeStreamRig) -> None:
    rig = await make_rig(start_in=60)
    client_enc = OpusEncoder(16000, 1, 16000)  # the client's own rate: an Opus stream has none
    packets = [client_enc.encode(f) for f in tone(440, 10, rate=16000)]
    rig.client.write(client_frame(ws.BINARY, packets[0]))
    rig.client.write(b"".join(client_frame(ws.BINARY, p) for p in packets[1:6]))  # several in one read
    both = b"".join(client_frame(ws.BINARY, p) for p in packets[6:])
    rig.client.write(both[:5])  # and split across reads
    await settle(0.01)
    rig.client.write(both[5:])
    assert await until(lambda: len(rig.provider.frames) == len(packets))
    reference = OpusDecoder(8000, 1)
    assert provider_audio(rig.provider) == b"".join(reference.decode(p) for p in packets)
    assert all(f.opcode == ws.TEXT and f.masked for f in rig.provider.frames)
    assert rig.relay.frames_in == len(packets)
    assert rig.client_proto.events == [], "audio never reaches Python"


# --- provider -> client ---


async def test_provider_audio_goes_out_paced_and_encoded_as_the_python_codec_would(make_rig: MakeStreamRig) -> None:
    rig = await make_rig(start_in=0.2)  # the reply is queued before the first slot
    speech = tone(600, 8)
    rig.provider.write(server_frame(ws.TEXT, audio_message(b"".join(speech))))
    assert await until(lambda: len(rig.client.packets) >= 30, within=3)
    got = rig.client.packets
    # the same frames through StreamCodec in Python: identical packets, the silence shortcut included
    python = StreamCodec(Codec.OPUS, Settings())
    expected = [python.encode(f) for f in speech + [bytes(FRAME)] * (len(got) - len(speech))]
    assert got == expected
    assert len(set(got[len(speech) + 5 :])) == 1, "settled silence is one repeated packet"
    heard = OpusDecoder(8000, 1)
    audio = [heard.decode(p) for p in got]
    assert all(len(a) == FRAME for a in audio), "20 ms each"
    assert all(op == ws.BINARY for op, _ in rig.client.messages)
    gaps = [b - a for a, b in itertools.pairwise(rig.client.arrivals)]
    assert statistics.median(gaps) == pytest.approx(PERIOD, abs=0.002)
    # the timing itself is the pacer specification's (test_pacer_spec); here, only that frames never bunch up
    assert min(gaps) >= PERIOD / 2, "no bursts"
    counts = rig.engine.take()
    assert counts["out_audio"] == len(speech)
    assert counts["out_silence"] >= 20


async def test_silence_state_carries_over_from_python(make_rig: MakeStreamRig) -> None:
    """A codec that has settled on silence in Python: the engine repeats its packet without encoding again."""
    codec = StreamCodec(Codec.OPUS, Settings())
    settled = [codec.encode(bytes(FRAME)) for _ in range(10)][-1]
    options = codec.relay_options(50)
    assert options["silence_packet"] == settled
    rig = await make_rig(codec=codec)
    assert await until(lambda: len(rig.client.packets) >= 5)
    assert set(rig.client.packets) == {settled}


# --- everything else reaches Python as it came ---

TO_PYTHON = [
    ("control text", client_frame(ws.TEXT, b'{"type":"dtmf","digit":"5"}')),
    ("ping", client_frame(ws.PING, b"hi")),
    ("close", client_frame(ws.CLOSE, struct.pack("!H", 1000))),
    ("empty binary", client_frame(ws.BINARY, b"")),
    ("undecodable packet", client_frame(ws.BINARY, b"\x03")),
    ("above the largest Opus packet", client_frame(ws.BINARY, bytes(MAX_PACKET + 1))),
    ("fragmented binary", client_frame(ws.BINARY, b"\xfc\xff", fin=False) + client_frame(0, b"\xfe")),
]
HEADER_TO_PYTHON = [
    ("unmasked", client_frame(ws.BINARY, b"\xfc\xff\xfe", masked=False), 2),
    ("reserved bits", client_frame(ws.BINARY, b"\xfc\xff\xfe", rsv=0x40), 2),
    ("unknown opcode", client_frame(0x3, b"abc"), 2),
    ("above the largest message", client_frame(ws.BINARY, bytes(STREAM_MAX_MESSAGE + 1)), 10),
]


@pytest.mark.parametrize("sent", [s for _, s in TO_PYTHON], ids=[n for n, _ in TO_PYTHON])
async def test_frames_the_data_plane_does_not_play_reach_python_as_sent(make_rig: MakeStreamRig, sent: bytes) -> None:
    rig = await make_rig(start_in=60)
    rig.client.write(sent)
    assert await until(lambda: rig.client_proto.joined == sent)
    await settle()
    assert rig.client_proto.joined == sent
    assert rig.provider.frames == []


@pytest.mark.parametrize(
    ("sent", "header"), [(s, h) for _, s, h in HEADER_TO_PYTHON], ids=[n for n, _, _ in HEADER_TO_PYTHON]
)
async def test_a_bad_client_header_alone_reaches_python(make_rig: MakeStreamRig, sent: bytes, header: int) -> None:
    rig = await make_rig(start_in=60)
    rig.client.write(sent)
    assert await until(lambda: len(rig.client_proto.data) >= 1)
    assert rig.client_proto.data[0] == sent[:header]
    assert rig.provider.frames == []


async def test_audio_around_a_control_message_keeps_its_order(make_rig: MakeStreamRig) -> None:
    rig = await make_rig(start_in=60)
    enc = OpusEncoder(8000, 1, 16000)
    packets = [enc.encode(f) for f in tone(300, 3)]
    dtmf = client_frame(ws.TEXT, b'{"type":"dtmf","digit":"1"}')
    seen: list[int] = []
    rig.client_proto.on_data = lambda _: seen.append(rig.relay.frames_in)
    rig.client.write(
        client_frame(ws.BINARY, packets[0]) + dtmf + b"".join(client_frame(ws.BINARY, p) for p in packets[1:])
    )
    assert await until(lambda: len(rig.provider.frames) == 3)
    assert rig.client_proto.data == [dtmf]
    assert seen == [1], "the control message was handed over after the first packet and before the others"


async def test_a_client_that_does_not_read_loses_audio_beyond_the_cap(make_rig: MakeStreamRig) -> None:
    rig = await make_rig(settings=Settings(audio_bitrate=128000), out_cap=2000, bufsize=2048)
    assert rig.client.transport is not None
    rig.client.transport.pause_reading()
    noise = np.random.default_rng(5).standard_normal(150 * 160) * 8000
    speech = noise.astype("<i2").tobytes()  # 3 s that Opus cannot squeeze: ~320 bytes a packet at 128 kb/s
    rig.provider.write(server_frame(ws.TEXT, audio_message(speech)))
    assert await until(lambda: rig.relay.queued > 0)
    assert await until(lambda: rig.relay.queued == 0, within=5), "played at its pace, whether or not it is read"
    assert rig.relay.buffered(CLIENT) <= 2000 + 4 + MAX_PACKET
    dropped = rig.engine.take()["dropped_backpressure"]
    assert dropped > 0
    rig.client.transport.resume_reading()
    assert await until(lambda: rig.relay.buffered(CLIENT) == 0)
    assert rig.client.parser.idle, "whole frames only"
