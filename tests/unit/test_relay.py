"""The compiled call data plane (server/_relay.c) against real TCP socket pairs on loopback.

Each test builds an Engine with one relayed call: an "Asterisk" peer on the AudioSocket side and a "provider" peer on
the WebSocket side, both asyncio connections on the test's event loop, which also runs the engine (its epoll
descriptor registered with ``add_reader``). The Python protocol objects the engine hands bytes to are recorders.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import gc
import itertools
import os
import random
import resource
import select
import socket
import struct
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pytest
from prometheus_client import CollectorRegistry
from relay_rig import (
    BOUNDS,
    FRAME,
    MARGIN,
    MAX_MESSAGE,
    MAX_SLEW,
    PERIOD,
    PREFIX,
    SILENCE,
    SUFFIX,
    AsteriskPeer,
    Peer,
    ProviderPeer,
    Recorder,
    add_relay,
    audio_message,
    close_rig,
    pcm,
    server_frame,
    settle,
    take_client_frames,
    tcp_pair,
    until,
)

from avr_runtime.audio.buffer import Overflow, PlayoutBuffer
from avr_runtime.config import Settings
from avr_runtime.protocol import audiosocket as wire
from avr_runtime.protocol import websocket as ws
from avr_runtime.reference.echo import Stats
from avr_runtime.reference.sts_server import StsServerProtocol
from avr_runtime.server import _relay  # built by the test command (scripts/bootstrap installs gcc)
from avr_runtime.server.audiosocket import AudioSocketConnection
from avr_runtime.server.call import Call
from avr_runtime.server.context import WorkerContext
from avr_runtime.server.relay import Relays, RelayTransport
from avr_runtime.services import metrics
from avr_runtime.services.providers.sts import StsSession
from avr_runtime.services.providers.wsclient import WebSocketConnection

if TYPE_CHECKING:
    from avr_runtime.server._relay import Engine as EngineType
    from avr_runtime.server._relay import Relay as RelayType

Engine = _relay.Engine
AS, WS = _relay.AS, _relay.WS


@dataclass
class Rig:
    engine: EngineType
    relay: RelayType
    asterisk: AsteriskPeer
    provider: ProviderPeer
    as_proto: Recorder
    ws_proto: Recorder

    def take(self) -> dict[str, Any]:
        return self.engine.take()


MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture(params=[0.0, 0.001], ids=["woken", "polled"])
async def make_rig(request: pytest.FixtureRequest) -> AsyncIterator[MakeRig]:
    """Every rig test runs twice: with the engine woken by each socket event, and reading its sockets every 1 ms
    (FAST_PATH_POLL_MS, the worker's default)."""
    loop = asyncio.get_running_loop()
    poll_interval: float = request.param
    made: list[Rig] = []

    async def make(
        *,
        start_in: float = 0.0,
        capacity: int = 500,
        drop_newest: bool = False,
        margin: float = MARGIN,
        grace_window: float = -1.0,
        max_slew: float = MAX_SLEW,
        max_message: int = MAX_MESSAGE,
        ws_bufsize: int = 0,
    ) -> Rig:
        engine = Engine(BOUNDS, max_message, poll_interval)
        loop.add_reader(engine.fileno(), engine.run)
        as_mine, as_remote = tcp_pair()
        ws_mine, ws_remote = tcp_pair(ws_bufsize)
        _, asterisk = await loop.create_connection(AsteriskPeer, sock=as_remote)
        _, provider = await loop.create_connection(ProviderPeer, sock=ws_remote)
        as_proto, ws_proto = Recorder(), Recorder()
        now = time.monotonic()
        relay = add_relay(
            engine,
            {"fd": as_mine.detach(), "protocol": as_proto},
            ws_mine.detach(),
            ws_proto,
            next_slot=now + start_in,
            earliest=now,
            capacity=capacity,
            drop_newest=drop_newest,
            margin=margin,
            max_slew=max_slew,
            grace_window=grace_window,
        )
        rig = Rig(engine, relay, asterisk, provider, as_proto, ws_proto)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        close_rig(rig.engine, rig.asterisk, rig.provider)


# --- AudioSocket → provider ---


@pytest.mark.parametrize("size", [2, 72, 74, 320, 1920])
async def test_caller_audio_becomes_one_masked_text_frame(make_rig: MakeRig, size: int) -> None:
    rig = await make_rig()
    audio = pcm(size, seed=size)
    rig.asterisk.write(wire.audio_frame(audio))
    assert await until(lambda: len(rig.provider.frames) == 1)
    frame = rig.provider.frames[0]
    assert frame.fin and frame.opcode == ws.TEXT and frame.masked
    assert frame.payload == PREFIX + base64.b64encode(audio) + SUFFIX
    # RFC 6455 5.2: "the minimal number of bytes MUST be used to encode the length"
    n = len(frame.payload)
    assert len(frame.header) == (2 if n < 126 else 4) + 4, f"{n}-byte payload with a {len(frame.header)}-byte header"
    # what a server-side parser makes of the bytes on the wire
    assert ws.FrameParser(from_client=True).feed(bytes(rig.provider.received)) == [(ws.TEXT, frame.payload)]
    assert rig.relay.frames_in == 1
    assert rig.as_proto.events == [], "audio never reaches Python"


async def test_masking_keys_differ_between_frames(make_rig: MakeRig) -> None:
    rig = await make_rig()
    for i in range(20):
        rig.asterisk.write(wire.audio_frame(pcm(FRAME, seed=i)))
    assert await until(lambda: len(rig.provider.frames) == 20)
    keys = {f.header[-4:] for f in rig.provider.frames}
    assert len(keys) >= 19
    assert [f.payload for f in rig.provider.frames] == [audio_message(pcm(FRAME, seed=i)) for i in range(20)]


async def test_frames_split_across_writes_are_reassembled(make_rig: MakeRig) -> None:
    rig = await make_rig()
    first, second = pcm(FRAME, seed=1), pcm(1920, seed=2)
    stream = wire.audio_frame(first) + wire.audio_frame(second)
    cuts = [0, 1, 2, 3, 100, 323, 324, 326, 1000, len(stream)]
    for a, b in itertools.pairwise(cuts):
        rig.asterisk.write(stream[a:b])
        await asyncio.sleep(0.005)
        if b < 323:
            assert rig.relay.frames_in == 0, "nothing is forwarded before the frame is whole"
    assert await until(lambda: len(rig.provider.frames) == 2)
    assert [f.payload for f in rig.provider.frames] == [audio_message(first), audio_message(second)]
    assert rig.relay.frames_in == 2
    assert rig.as_proto.events == []


async def test_several_frames_in_one_write_are_each_forwarded(make_rig: MakeRig) -> None:
    rig = await make_rig()
    audios = [pcm(FRAME, seed=i) for i in range(5)]
    rig.asterisk.write(b"".join(wire.audio_frame(a) for a in audios))
    assert await until(lambda: len(rig.provider.frames) == 5)
    assert [f.payload for f in rig.provider.frames] == [audio_message(a) for a in audios]
    assert rig.relay.frames_in == 5


# --- provider → playout → AudioSocket ---


def frame_n(i: int) -> bytes:
    return bytes([1 + i % 250]) * FRAME


def spoken(rig: Rig) -> list[bytes]:
    """What the caller heard, silence left out."""
    return [f for f in rig.asterisk.audio() if f != SILENCE]


async def test_provider_audio_is_played_frame_by_frame_then_silence(make_rig: MakeRig) -> None:
    rig = await make_rig()
    assert await until(lambda: len(rig.asterisk.frames) >= 3), "silence while idle"
    assert all(f == wire.Frame(wire.Kind.AUDIO, SILENCE, 8000) for f in rig.asterisk.frames)
    start = len(rig.asterisk.frames)
    audio = pcm(3 * FRAME, seed=7)
    rig.provider.write(server_frame(ws.TEXT, audio_message(audio)))
    assert await until(lambda: len(rig.asterisk.frames) >= start + 8)
    played = rig.asterisk.audio(start)
    assert all(len(f) == FRAME for f in played)
    at = [i for i, f in enumerate(played) if f != SILENCE]
    assert [played[i] for i in at] == [audio[i * FRAME : (i + 1) * FRAME] for i in range(3)]
    assert at == list(range(at[0], at[0] + 3)), "back to back, no silence in between"
    assert all(f == SILENCE for f in played[at[-1] + 1 :]), "silence once the reply is played"
    assert rig.ws_proto.events == [], "audio messages never reach Python"
    got = rig.take()
    assert got["out_audio"] == 3


async def test_a_trailing_partial_frame_is_played_padded_with_silence(make_rig: MakeRig) -> None:
    rig = await make_rig()
    audio = pcm(400, seed=3)
    rig.provider.write(server_frame(ws.TEXT, audio_message(audio)))
    assert await until(lambda: len(spoken(rig)) == 2)
    assert await until(lambda: rig.asterisk.audio()[-1] == SILENCE)
    assert spoken(rig) == [audio[:FRAME], audio[FRAME:] + bytes(2 * FRAME - len(audio))]
    assert rig.relay.queued == 0


async def test_audio_split_across_messages_and_reads_is_reframed(make_rig: MakeRig) -> None:
    rig = await make_rig(start_in=0.2)  # nothing plays until every message is in
    audio = pcm(5 * FRAME, seed=11)
    chunks = [audio[:100], audio[100:700], audio[700:701], audio[701:]]
    stream = b"".join(server_frame(ws.TEXT, audio_message(c)) for c in chunks)
    rig.provider.write(stream[:7])
    await settle(0.01)
    rig.provider.write(stream[7:])
    assert await until(lambda: rig.relay.queued == 5)
    assert await until(lambda: len(spoken(rig)) == 5, within=3)
    assert spoken(rig) == [audio[i : i + FRAME] for i in range(0, len(audio), FRAME)]


# --- everything else reaches Python, as the exact bytes ---

AS_TO_PYTHON = [
    ("dtmf", b"\x03\x00\x015", b"\x03\x00\x015"),
    ("hangup", b"\x00\x00\x00", b"\x00\x00\x00"),
    ("error", b"\xff\x00\x01\x05", b"\xff\x00\x01\x05"),
    ("odd-length audio", b"\x10\x00\x03abc", b"\x10\x00\x03abc"),
    ("empty audio", b"\x10\x00\x00", b"\x10\x00\x00"),
    ("audio above 1920 bytes", b"\x10\x07\x81" + bytes(1921), b"\x10\x07\x81"),
    ("unknown type, huge length", b"\x42\xff\xff", b"\x42\xff\xff"),
    ("unknown type, small", b"\x42\x00\x01\x00", b"\x42\x00\x01\x00"),
    ("16 kHz slin", b"\x12\x01\x40" + bytes(320), b"\x12\x01\x40"),
    ("a second uuid", wire.encode(wire.Kind.UUID, bytes(range(16))), wire.encode(wire.Kind.UUID, bytes(range(16)))),
]


@pytest.mark.parametrize(
    ("sent", "expected"), [(s, e) for _, s, e in AS_TO_PYTHON], ids=[n for n, _, _ in AS_TO_PYTHON]
)
async def test_audiosocket_frames_that_are_not_slin_audio_reach_python(
    make_rig: MakeRig, sent: bytes, expected: bytes
) -> None:
    rig = await make_rig()
    # Python's answer to anything refused from its header is to end the call: the rest is never parsed here
    rig.as_proto.on_data = lambda data: rig.relay.close(AS)
    rig.asterisk.write(sent)
    assert await until(lambda: bool(rig.as_proto.data))
    await settle()
    assert rig.as_proto.data == [expected]
    assert rig.relay.frames_in == 0
    assert rig.provider.frames == []


async def test_input_after_python_paused_the_side_is_dropped(make_rig: MakeRig) -> None:
    """What the AudioSocket leg does on a protocol error: audio behind the bad frame in the same read is not
    forwarded while the call ends."""
    rig = await make_rig()
    rig.as_proto.on_data = lambda data: rig.relay.pause(AS)
    odd = b"\x10\x00\x03abc"
    rig.asterisk.write(odd + wire.audio_frame(pcm(FRAME, seed=1)))
    assert await until(lambda: bool(rig.as_proto.data))
    await settle()
    rig.asterisk.write(wire.audio_frame(pcm(FRAME, seed=2)))
    await settle()
    assert rig.as_proto.data == [odd]
    assert rig.relay.frames_in == 0
    assert rig.provider.frames == []
    rig.relay.resume(AS)
    rig.asterisk.write(wire.audio_frame(pcm(FRAME, seed=3)))
    assert await until(lambda: rig.relay.frames_in == 1), "resume parses again"


async def test_python_frames_keep_their_place_between_audio_frames(make_rig: MakeRig) -> None:
    rig = await make_rig()
    a1, a2 = pcm(FRAME, seed=1), pcm(FRAME, seed=2)
    stream = wire.audio_frame(a1) + b"\x03\x00\x01#" + wire.audio_frame(a2) + b"\x10\x00\x01x" + b"\x00\x00\x00"
    order: list[str] = []
    rig.as_proto.on_data = lambda data: order.append(f"python after {rig.relay.frames_in}")
    rig.asterisk.write(stream)
    assert await until(lambda: len(rig.as_proto.data) == 3 and len(rig.provider.frames) == 2)
    assert rig.as_proto.data == [b"\x03\x00\x01#", b"\x10\x00\x01x", b"\x00\x00\x00"]
    assert order == ["python after 1", "python after 2", "python after 2"]
    assert [f.payload for f in rig.provider.frames] == [audio_message(a1), audio_message(a2)]


WS_TO_PYTHON = [
    ("interruption", server_frame(ws.TEXT, b'{"type":"interruption"}')),
    ("transcript", server_frame(ws.TEXT, b'{"type":"transcript","role":"agent","text":"hi"}')),
    ("audio with spaces", server_frame(ws.TEXT, b'{"type": "audio", "audio": "AAAA"}')),
    ("audio, bad base64", server_frame(ws.TEXT, PREFIX + b"@@@@" + SUFFIX)),
    ("audio, unpadded base64", server_frame(ws.TEXT, PREFIX + b"AAA" + SUFFIX)),
    ("binary", server_frame(ws.BINARY, audio_message(bytes(4)))),
    ("ping", server_frame(ws.PING, b"are-you-there")),
    ("pong", server_frame(ws.PONG, b"")),
    ("close", server_frame(ws.CLOSE, struct.pack("!H", 1000) + b"bye")),
    ("large non-audio text", server_frame(ws.TEXT, b'{"type":"x","pad":"' + b"y" * 70_000 + b'"}')),
]


@pytest.mark.parametrize("sent", [s for _, s in WS_TO_PYTHON], ids=[n for n, _ in WS_TO_PYTHON])
async def test_provider_frames_that_are_not_audio_messages_reach_python(make_rig: MakeRig, sent: bytes) -> None:
    rig = await make_rig(start_in=0.2)
    rig.provider.write(sent)
    assert await until(lambda: len(rig.ws_proto.joined) >= len(sent))
    await settle()
    assert rig.ws_proto.data == [sent], "one whole frame per call"
    assert rig.relay.queued == 0


def fragmented(opcode: int, parts: list[bytes]) -> list[bytes]:
    return [
        server_frame(opcode if i == 0 else ws.CONTINUATION, part, fin=i == len(parts) - 1)
        for i, part in enumerate(parts)
    ]


async def test_a_fragmented_message_goes_to_python_fragment_by_fragment(make_rig: MakeRig) -> None:
    rig = await make_rig(start_in=0.3)
    # the first and the last fragment each look like a whole audio message: together they are one text message
    frames = fragmented(ws.TEXT, [audio_message(pcm(FRAME, 1)), b"x", audio_message(pcm(FRAME, 2))])
    frames.insert(1, server_frame(ws.PING, b"mid"))  # control frames may come between fragments
    after = server_frame(ws.TEXT, audio_message(pcm(FRAME, 5)))  # the message is over: audio again
    rig.provider.write(b"".join(frames))
    await settle(0.01)
    rig.provider.write(after)
    assert await until(lambda: len(rig.ws_proto.data) == len(frames) and rig.relay.queued == 1)
    await settle()
    assert rig.ws_proto.data == frames
    assert rig.relay.queued == 1
    assert await until(lambda: bool(spoken(rig)), within=3)
    await settle(0.1)
    assert spoken(rig) == [pcm(FRAME, 5)]


async def test_a_fragmented_binary_message_is_python_s_too(make_rig: MakeRig) -> None:
    rig = await make_rig(start_in=0.3)
    frames = fragmented(ws.BINARY, [b"one", b"two"])
    frames.insert(1, server_frame(ws.TEXT, audio_message(pcm(FRAME, 1))))  # inside a message: not audio here
    frames.append(server_frame(ws.CONTINUATION, audio_message(pcm(FRAME, 2))))  # nothing to continue: Python's
    rig.provider.write(b"".join(frames))
    assert await until(lambda: len(rig.ws_proto.data) == len(frames))
    await settle()
    assert rig.ws_proto.data == frames
    assert rig.relay.queued == 0


BAD_HEADERS = [  # (name, frame, length of its header)
    ("masked", bytes([0x81, 0x85]) + b"abcd" + bytes(5), 2),
    ("rsv bit", server_frame(ws.TEXT, audio_message(bytes(4)), rsv=0x40), 2),
    ("unknown opcode", server_frame(0x3, b"xyz"), 2),
    ("fragmented ping", server_frame(ws.PING, b"x", fin=False), 2),
    ("long ping", server_frame(ws.PING, bytes(126)), 4),
    ("above max_message", server_frame(ws.TEXT, b"", length=1 << 20), 10),
]


@pytest.mark.parametrize(("sent", "header"), [(s, h) for _, s, h in BAD_HEADERS], ids=[n for n, _, _ in BAD_HEADERS])
async def test_a_bad_provider_header_alone_reaches_python(make_rig: MakeRig, sent: bytes, header: int) -> None:
    rig = await make_rig(start_in=0.3, max_message=65536)
    # as WebSocketConnection does: a protocol error closes the connection at once
    rig.ws_proto.on_data = lambda data: rig.relay.close(WS)
    rig.provider.write(sent)
    assert await until(lambda: bool(rig.ws_proto.data))
    await settle()
    assert rig.ws_proto.data == [sent[:header]]
    assert rig.relay.queued == 0
    assert await until(lambda: rig.provider.eof)


# --- Python's writes and closes ---


async def test_python_writes_go_out_in_order_with_the_engine_s_own(make_rig: MakeRig) -> None:
    rig = await make_rig()
    a1, a2 = pcm(FRAME, seed=1), pcm(FRAME, seed=2)
    dtmf = ws.encode_frame(ws.TEXT, b'{"type":"dtmf_digit","digit":"5"}', b"\x01\x02\x03\x04")
    rig.asterisk.write(wire.audio_frame(a1))
    assert await until(lambda: rig.relay.frames_in == 1)
    rig.relay.write(WS, dtmf)
    rig.asterisk.write(wire.audio_frame(a2))
    assert await until(lambda: len(rig.provider.frames) == 3)
    assert [f.payload for f in rig.provider.frames] == [
        audio_message(a1),
        b'{"type":"dtmf_digit","digit":"5"}',
        audio_message(a2),
    ]
    # the AudioSocket side: the pacer's frames, then ours, each whole (the peer's parser would raise otherwise)
    assert await until(lambda: len(rig.asterisk.frames) >= 2)
    rig.relay.write(AS, wire.error_frame(wire.ErrorCode.PROTOCOL) + wire.HANGUP_FRAME)
    assert await until(lambda: any(f.kind is wire.Kind.HANGUP for f in rig.asterisk.frames))
    await settle()  # the pacer goes on after them
    kinds = [f.kind for f in rig.asterisk.frames]
    at = kinds.index(wire.Kind.ERROR)
    assert kinds[at : at + 2] == [wire.Kind.ERROR, wire.Kind.HANGUP]
    assert set(kinds[:at] + kinds[at + 2 :]) == {wire.Kind.AUDIO}
    assert len(kinds) > at + 2, "the pacer's frames after Python's, still whole"
    assert rig.relay.buffered(AS) == 0 and rig.relay.buffered(WS) == 0
    with pytest.raises(ValueError, match="side"):
        rig.relay.write(2, b"x")


async def test_close_reports_once_and_the_engine_lets_go(make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.relay.write(AS, wire.HANGUP_FRAME)
    assert rig.relay.is_open(AS)
    assert rig.relay.close(AS) is True
    assert rig.relay.close(AS) is False
    assert not rig.relay.is_open(AS)
    assert await until(lambda: rig.asterisk.eof)
    assert rig.asterisk.frames[-1].kind is wire.Kind.HANGUP, "pending output is flushed before the close"
    assert rig.engine.active() == 1
    rig.provider.write(server_frame(ws.TEXT, audio_message(pcm(FRAME))))  # nobody to play it to: no harm
    await settle()
    assert rig.relay.close(WS) is True
    assert rig.relay.close(WS) is False
    assert rig.engine.active() == 0
    assert await until(lambda: rig.provider.eof)
    await settle()
    assert rig.as_proto.lost == [] and rig.ws_proto.lost == [], "the closer reports its own connection_lost"
    rig.relay.write(AS, b"after close")  # dropped, not an error
    with pytest.raises(ValueError, match="side"):
        rig.relay.close(5)


async def test_no_caller_audio_after_python_sent_a_close_frame(make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.asterisk.write(wire.audio_frame(pcm(FRAME, 1)))
    assert await until(lambda: len(rig.provider.frames) == 1)
    rig.relay.write(WS, ws.encode_frame(ws.CLOSE, ws.close_payload(ws.NORMAL), b"abcd"))
    rig.asterisk.write(wire.audio_frame(pcm(FRAME, 2)) * 3)
    assert await until(lambda: rig.relay.frames_in == 4)
    await settle()
    assert [f.opcode for f in rig.provider.frames] == [ws.TEXT, ws.CLOSE]
    # the closing handshake still works both ways
    rig.provider.write(server_frame(ws.CLOSE, ws.close_payload(ws.NORMAL)))
    assert await until(lambda: bool(rig.ws_proto.data))
    assert rig.ws_proto.data == [server_frame(ws.CLOSE, ws.close_payload(ws.NORMAL))]


# --- end of stream ---


async def test_peer_eof_calls_connection_lost_once_on_that_side(make_rig: MakeRig) -> None:
    rig = await make_rig()
    assert rig.asterisk.transport is not None
    rig.asterisk.transport.close()
    assert await until(lambda: bool(rig.as_proto.lost))
    await settle()
    assert rig.as_proto.events == [("lost", None)]
    assert rig.ws_proto.events == []
    assert not rig.relay.is_open(AS) and rig.relay.is_open(WS)
    assert rig.relay.close(AS) is False, "already reported"
    assert rig.engine.active() == 1
    assert rig.provider.transport is not None
    rig.provider.transport.close()
    assert await until(lambda: bool(rig.ws_proto.lost))
    await settle()
    assert rig.ws_proto.events == [("lost", None)]
    assert rig.as_proto.events == [("lost", None)]
    assert rig.engine.active() == 0


@pytest.mark.parametrize("side", [AS, WS])
async def test_a_frame_cut_short_reaches_python_before_connection_lost(make_rig: MakeRig, side: int) -> None:
    rig = await make_rig()
    if side == AS:
        peer: Peer = rig.asterisk
        proto = rig.as_proto
        cut = b"\x10\x01\x40" + pcm(100)
    else:
        peer, proto = rig.provider, rig.ws_proto
        cut = server_frame(ws.TEXT, audio_message(pcm(FRAME)))[:200]
    peer.write(cut[:50])
    await settle(0.01)
    peer.write(cut[50:])
    await settle(0.01)
    assert proto.events == [], "an incomplete frame waits"
    assert peer.transport is not None
    peer.transport.close()
    assert await until(lambda: bool(proto.lost))
    await settle()
    assert proto.events == [("data", cut), ("lost", None)]


async def test_a_reset_connection_reports_the_error(make_rig: MakeRig) -> None:
    rig = await make_rig()
    transport = rig.provider.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # RST
    assert await until(lambda: bool(rig.ws_proto.lost))
    await settle()
    assert len(rig.ws_proto.lost) == 1
    exc = rig.ws_proto.lost[0]
    assert isinstance(exc, ConnectionError) and exc.errno == errno.ECONNRESET
    assert rig.as_proto.events == []


# --- barge-in and Python's own audio ---


async def test_clear_returns_the_queued_frames_and_the_caller_hears_silence(make_rig: MakeRig) -> None:
    rig = await make_rig(start_in=0.1)
    rig.relay.push(pcm(5 * FRAME + 10))
    assert rig.relay.queued == 5
    assert rig.relay.clear() == 5
    assert rig.relay.queued == 0
    assert rig.relay.clear() == 0
    assert await until(lambda: len(rig.asterisk.frames) >= 8)
    assert all(f == SILENCE for f in rig.asterisk.audio()), "nothing of the cleared reply, not its partial frame"
    assert rig.take()["out_audio"] == 0


async def test_push_reaches_the_playout_buffer_as_provider_audio_does(make_rig: MakeRig) -> None:
    rig = await make_rig()
    audio = pcm(2 * FRAME, seed=4)
    rig.relay.push(audio)
    assert await until(lambda: len(spoken(rig)) == 2)
    assert spoken(rig) == [audio[:FRAME], audio[FRAME:]]


async def test_stop_ends_the_pacer(make_rig: MakeRig) -> None:
    rig = await make_rig()
    assert await until(lambda: len(rig.asterisk.frames) >= 2)
    rig.relay.stop()
    assert not rig.relay.pacing
    await settle(0.03)
    count = len(rig.asterisk.frames)
    rig.relay.push(pcm(FRAME))
    await settle(0.1)
    assert len(rig.asterisk.frames) == count
    assert rig.relay.queued == 1


# --- counters ---


async def test_take_counts_frames_and_resets(make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.provider.write(server_frame(ws.TEXT, audio_message(pcm(4 * FRAME))))
    assert await until(lambda: len(spoken(rig)) == 4)
    assert await until(lambda: rig.asterisk.audio()[-1] == SILENCE)
    rig.relay.stop()
    await settle(0.03)
    got = rig.take()
    again = rig.engine.take()
    sent = rig.asterisk.audio()
    assert got["out_audio"] == 4
    assert got["out_silence"] == len(sent) - 4
    assert len(got["latency"]) == len(BOUNDS) + 1
    assert sum(got["latency"]) == got["out_audio"]
    # all four arrived at once: they waited about 0, 1, 2 and 3 periods (+ up to one for the first slot)
    assert 0.1 <= got["latency_sum"] <= 0.4
    assert got["dropped_overflow"] == got["dropped_latency"] == got["dropped_backpressure"] == 0
    assert again == {
        "out_audio": 0,
        "out_silence": 0,
        "late": 0,
        "dropped_latency": 0,
        "dropped_overflow": 0,
        "dropped_backpressure": 0,
        "latency": [0] * (len(BOUNDS) + 1),
        "latency_sum": 0.0,
    }
    # the Prometheus side takes the histogram as it is
    registry = CollectorRegistry()
    hist = metrics.LoopHistogram("t_relay_latency_seconds", "doc", BOUNDS, registry=registry)
    hist.merge(got["latency"], got["latency_sum"])
    family = next(iter(hist.collect()))
    count = next(s.value for s in family.samples if s.name.endswith("_count"))
    assert count == 4


async def test_a_provider_that_does_not_read_loses_whole_caller_frames(make_rig: MakeRig) -> None:
    rig = await make_rig(start_in=60, ws_bufsize=16384)  # no pacer traffic, small kernel buffers
    assert rig.provider.transport is not None
    rig.provider.transport.pause_reading()
    audio = [pcm(1920, seed=i % 8) for i in range(300)]  # ~780 kB of messages
    for chunk in range(0, len(audio), 100):
        rig.asterisk.write(b"".join(wire.audio_frame(a) for a in audio[chunk : chunk + 100]))
        await asyncio.sleep(0.002)
    assert await until(lambda: rig.relay.frames_in == len(audio), within=10)
    got = rig.take()
    assert got["dropped_backpressure"] > 0
    assert rig.relay.buffered(WS) <= 64 * 1024 + 2600
    rig.provider.transport.resume_reading()
    assert await until(lambda: len(rig.provider.frames) == len(audio) - got["dropped_backpressure"], within=10)
    # whole messages only, each one of the frames sent, in order
    expected = iter(audio_message(a) for a in audio)
    assert all(f.payload in expected for f in rig.provider.frames)
    assert rig.relay.buffered(WS) == 0


# --- the engine runs its relays' pacer (its rules: tests/unit/test_pacer_spec.py, on a virtual clock) ---


async def test_a_reply_faster_than_real_time_is_played_whole_and_in_order(make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.relay.push(b"".join(frame_n(i) for i in range(60)))  # 1.2 s of speech arriving at once, as TTS streams it
    assert await until(lambda: len(spoken(rig)) == 60, within=5)
    assert spoken(rig) == [frame_n(i) for i in range(60)]
    got = rig.take()
    assert got["dropped_latency"] == 0 and got["out_audio"] == 60


# --- the C playout buffer against audio/buffer.py ---


@pytest.mark.parametrize("policy", [Overflow.DROP_OLDEST, Overflow.DROP_NEWEST])
@pytest.mark.parametrize("seed", range(4))
async def test_playout_matches_the_python_buffer(make_rig: MakeRig, policy: Overflow, seed: int) -> None:
    capacity = 3
    rig = await make_rig(capacity=capacity, drop_newest=policy is Overflow.DROP_NEWEST)
    rig.relay.stop()  # nothing is played: the buffer alone
    reference = PlayoutBuffer(FRAME, capacity, policy)
    rng = random.Random(seed)
    for i in range(60):
        chunk = pcm(rng.choice([1, 50, 319, 320, 321, 640, 700, 1000, 1500]), seed=seed * 100 + i)
        if rng.random() < 0.1:
            assert rig.relay.clear() == reference.clear()
        dropped = reference.push(chunk)
        rig.relay.push(chunk)
        assert rig.take()["dropped_overflow"] == dropped, f"push {i}"
        assert rig.relay.queued == len(reference), f"push {i}"


@pytest.mark.parametrize("policy", [Overflow.DROP_OLDEST, Overflow.DROP_NEWEST])
async def test_played_audio_matches_the_python_buffer(make_rig: MakeRig, policy: Overflow) -> None:
    capacity = 3
    rig = await make_rig(capacity=capacity, drop_newest=policy is Overflow.DROP_NEWEST, start_in=0.15)
    reference = PlayoutBuffer(FRAME, capacity, policy)
    chunks = [pcm(n, seed=n) for n in (100, 700, 320, 45, 1000, 30)]
    dropped = 0
    for chunk in chunks:  # all before the first slot
        dropped += reference.push(chunk)
        rig.relay.push(chunk)
    assert rig.relay.queued == len(reference) == capacity
    expected = []
    while (item := reference.pop()) is not None:
        expected.append(item[0])
    reference.flush_partial()
    while (item := reference.pop()) is not None:
        expected.append(item[0])
    assert await until(lambda: len(spoken(rig)) == len(expected), within=3)
    assert await until(lambda: rig.asterisk.audio()[-1] == SILENCE)
    assert spoken(rig) == expected
    assert rig.take()["dropped_overflow"] == dropped > 0


# --- polling (FAST_PATH_POLL_MS) ---


def readable(fd: int, within: float) -> bool:
    return bool(select.select([fd], [], [], within)[0])


@pytest.mark.parametrize("poll_interval", [0.0, 0.2])
def test_a_polled_engine_is_not_woken_by_its_sockets_and_reads_them_on_its_timer(poll_interval: float) -> None:
    """Polled, a peer's send does not make the engine's descriptor readable (no wake-up of the worker per socket
    event); the next poll reads it. Woken, the same send makes it readable at once. The event loop is not used here:
    run() is called by hand, as the loop would when the descriptor is readable."""
    engine = Engine(BOUNDS, MAX_MESSAGE, poll_interval)
    as_mine, as_remote = tcp_pair()
    ws_mine, ws_remote = tcp_pair()
    now = time.monotonic()
    add_relay(
        engine,
        {"fd": as_mine.detach(), "protocol": Recorder()},
        ws_mine.detach(),
        Recorder(),
        next_slot=now + 60,  # no pacer slot during the test: only the poll timer may wake the engine
        earliest=now,
        capacity=10,
        drop_newest=False,
        margin=MARGIN,
        max_slew=MAX_SLEW,
    )
    try:
        engine.run()
        if poll_interval:
            # run just after a poll, so the next one is a whole interval away
            assert readable(engine.fileno(), poll_interval + 0.1), "the poll timer fires"
            engine.run()
            assert not readable(engine.fileno(), 0.0)
        as_remote.send(wire.audio_frame(pcm(320)))
        if poll_interval:
            assert not readable(engine.fileno(), 0.05), "a socket event must not wake a polled engine"
            assert readable(engine.fileno(), poll_interval + 0.1), "the next poll fires"
        else:
            assert readable(engine.fileno(), 0.05), "a socket event wakes an engine that is not polled"
        engine.run()
        ws_remote.setblocking(True)
        ws_remote.settimeout(1.0)
        got = bytearray()
        while not take_client_frames(bytearray(got)):
            got += ws_remote.recv(65536)
        (frame,) = take_client_frames(got)
        assert frame.payload == audio_message(pcm(320))
    finally:
        engine.close()
        as_remote.close()
        ws_remote.close()


def test_a_bad_poll_interval_is_refused() -> None:
    for bad in (-0.001, 2.0, float("nan")):
        with pytest.raises(ValueError, match="poll_interval"):
            Engine(BOUNDS, MAX_MESSAGE, bad)


# --- handover edge cases ---


async def test_add_refuses_a_bad_capacity_and_a_bad_descriptor_without_taking_the_caller_s_fds() -> None:
    engine = Engine(BOUNDS, MAX_MESSAGE)
    mine, remote = tcp_pair()
    fd = mine.detach()
    now = time.monotonic()
    kw: dict[str, Any] = {"next_slot": now, "earliest": now, "margin": MARGIN, "max_slew": MAX_SLEW}
    try:
        with pytest.raises(ValueError, match="capacity"):
            add_relay(engine, {"fd": fd, "protocol": Recorder()}, fd, Recorder(), capacity=0, **kw)
        with pytest.raises(TypeError, match="capacity"):  # each dict's keys are checked
            engine.add(
                {"fd": fd, "protocol": Recorder()},
                {"fd": fd, "protocol": cast(Any, Recorder())},
                cast(Any, {"capcity": 10}),
                {"period": PERIOD, "margin": MARGIN, "max_slew": MAX_SLEW, "next_slot": now, "earliest": now},
            )
        bad = os.open(os.devnull, os.O_RDONLY)
        os.close(bad)  # a descriptor number that is surely closed
        with pytest.raises(OSError):
            add_relay(engine, {"fd": fd, "protocol": Recorder()}, bad, Recorder(), capacity=10, **kw)
        assert engine.active() == 0
        # relay.py closes both descriptors itself when add() fails: the engine must not have closed them already
        os.fstat(fd)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        remote.close()
        engine.close()


# --- relay.py: the handover of a live call, in process (worker context, AudioSocket server, echo provider) ---


@dataclass
class InProcess:
    ctx: WorkerContext
    relays: Relays
    legs: list[AudioSocketConnection]
    port: int
    stats: Stats


@pytest.fixture
async def in_process() -> AsyncIterator[InProcess]:
    loop = asyncio.get_running_loop()
    stats = Stats()
    provider = await loop.create_server(lambda: StsServerProtocol(stats), "127.0.0.1", 0)
    provider_port = provider.sockets[0].getsockname()[1]
    ctx = WorkerContext.create(Settings(sts_url=f"ws://127.0.0.1:{provider_port}", audiosocket_format="slin"))
    relays = ctx.relays
    assert relays is not None
    ctx.relays = None  # calls are handed over when the test says so
    legs: list[AudioSocketConnection] = []

    def accept() -> AudioSocketConnection:
        legs.append(AudioSocketConnection(ctx))
        return legs[-1]

    server = await loop.create_server(accept, "127.0.0.1", 0)
    yield InProcess(ctx, relays, legs, server.sockets[0].getsockname()[1], stats)
    server.close()
    provider.close()
    for leg in legs:
        if leg.task is not None and not leg.task.done():
            leg.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leg.task
    ctx.relays = relays
    await ctx.close()


@dataclass
class Caller:
    """A minimal Asterisk: writes frames, collects what comes back."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    frames: list[wire.Frame] = field(default_factory=list)
    closed: bool = False

    async def collect(self) -> None:
        parser = wire.FrameParser()
        with contextlib.suppress(ConnectionError):
            while data := await self.reader.read(65536):
                self.frames += parser.feed(data)
        self.closed = True

    def audio(self) -> list[bytes]:
        return [f.payload for f in self.frames if f.kind is wire.Kind.AUDIO and f.payload != SILENCE]


@dataclass
class LiveCall:
    caller: Caller
    collecting: asyncio.Task[None]
    leg: AudioSocketConnection
    call: Call
    conn: WebSocketConnection


async def live_call(ip: InProcess) -> LiveCall:
    """A call whose provider is connected: ready to be handed over."""
    reader, writer = await asyncio.open_connection("127.0.0.1", ip.port)
    caller = Caller(reader, writer)
    collecting = asyncio.create_task(caller.collect())
    # one frame of audio first, as Asterisk streams from the start: it tells the leg the call is 8 kHz slin
    writer.write(wire.uuid_frame(uuid.uuid4()) + wire.audio_frame(SILENCE))

    def ready() -> bool:
        call = ip.legs[0].call if ip.legs else None
        return (
            call is not None
            and ip.legs[0].detachable()
            and call.session is not None
            and isinstance(call.session, StsSession)
            and (call.session.connection is not None and call.pacer.snapshot() is not None)
        )

    assert await until(ready)
    leg = ip.legs[0]
    call = leg.call
    assert call is not None and isinstance(call.session, StsSession)
    conn = call.session.connection
    assert conn is not None
    return LiveCall(caller, collecting, leg, call, conn)


async def speak(caller: Caller, frames: list[bytes]) -> None:
    for frame in frames:
        caller.writer.write(wire.audio_frame(frame))
        await asyncio.sleep(PERIOD)


async def test_take_over_moves_a_live_call_and_python_keeps_its_control_path(in_process: InProcess) -> None:
    ip = in_process
    live = await live_call(ip)
    caller, collecting, leg, call, conn = live.caller, live.collecting, live.leg, live.call, live.conn
    assert ip.relays.take_over(leg, conn, call)
    assert isinstance(leg.transport, RelayTransport) and isinstance(conn.transport, RelayTransport)
    assert ip.relays.active == 1 and not call.pacer.running
    words = [pcm(FRAME, seed=i) for i in range(10)]
    await speak(caller, words)
    assert await until(lambda: len(caller.audio()) == len(words))
    assert caller.audio() == words, "echoed through the engine"
    caller.writer.write(wire.encode(wire.Kind.DTMF, b"7"))  # Python's: it reaches the provider as a message
    assert await until(lambda: ip.stats["sts_dtmf"] == 1)
    caller.writer.write(wire.HANGUP_FRAME)
    assert leg.task is not None
    assert await asyncio.wait_for(leg.task, 5) == "hangup"
    await asyncio.wait_for(collecting, 5)
    assert caller.closed and caller.frames[-1].kind is wire.Kind.HANGUP
    assert ip.stats["sts_audio"] == 1 + len(words)  # and live_call's first frame
    assert await until(lambda: ip.relays.active == 0), "both sockets closed, the engine let go"
    caller.writer.close()


async def test_a_handover_that_fails_leaves_the_call_working_in_python(in_process: InProcess) -> None:
    ip = in_process
    live = await live_call(ip)
    caller, collecting, leg, call, conn = live.caller, live.collecting, live.leg, live.call, live.conn
    # room for one more descriptor, not two: the second duplicate fails (EMFILE), as it would on a full worker
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = max(int(name) for name in os.listdir("/proc/self/fd")) + 16
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        with contextlib.suppress(OSError):
            for _ in range(limit):  # every free number below the limit (bounded: there are fewer than that)
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        os.close(fillers.pop())
        with pytest.raises(OSError):
            ip.relays.take_over(leg, conn, call)
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert ip.relays.active == 0
    words = [pcm(FRAME, seed=i) for i in range(5)]
    await speak(caller, words)
    assert await until(lambda: len(caller.audio()) == len(words)), "the call still runs in Python"
    assert caller.audio() == words
    caller.writer.write(wire.HANGUP_FRAME)
    assert leg.task is not None
    assert await asyncio.wait_for(leg.task, 5) == "hangup"
    await asyncio.wait_for(collecting, 5)
    assert caller.closed and caller.frames[-1].kind is wire.Kind.HANGUP
    caller.writer.close()


async def test_a_relayed_call_is_freed_once_it_has_ended(in_process: InProcess) -> None:
    """The relay, its two transports and the call's objects form cycles through the C type: the collector must be
    able to see and free them, or a pod that lives for weeks grows by every call it has relayed."""
    ip = in_process
    live = await live_call(ip)
    assert ip.relays.take_over(live.leg, live.conn, live.call)
    refs = [weakref.ref(o) for o in (live.leg, live.call, live.conn, live.leg.transport, live.conn.transport)]
    await speak(live.caller, [pcm(FRAME, seed=i) for i in range(3)])
    live.caller.writer.write(wire.HANGUP_FRAME)
    task = live.leg.task
    assert task is not None
    assert await asyncio.wait_for(task, 5) == "hangup"
    await asyncio.wait_for(live.collecting, 5)
    assert await until(lambda: ip.relays.active == 0)
    live.caller.writer.close()
    await asyncio.sleep(0.05)  # the engine's and the loop's callbacks for the closed sockets
    ip.legs.clear()
    del live, task
    gc.collect()
    alive = [type(r()).__name__ for r in refs if r() is not None]
    assert alive == [], f"still alive after the call ended: {alive}"


def test_an_engine_nobody_refers_to_is_collected_with_its_relays_and_their_sockets() -> None:
    """A cycle through both C types (engine → relay → protocol → engine) is one the collector can see and break."""
    engine = Engine(BOUNDS, MAX_MESSAGE)
    a_mine, a_remote = tcp_pair()
    w_mine, w_remote = tcp_pair()
    now = time.monotonic()
    as_proto, ws_proto = Recorder(), Recorder()
    relay = add_relay(
        engine,
        {"fd": a_mine.detach(), "protocol": as_proto},
        w_mine.detach(),
        ws_proto,
        next_slot=now,
        earliest=now,
        capacity=10,
        drop_newest=False,
        margin=MARGIN,
        max_slew=MAX_SLEW,
    )
    cast(Any, as_proto).keep = (engine, relay)  # as a leg keeps its transport, which keeps the relay
    refs: list[weakref.ref[Any]] = [weakref.ref(relay), weakref.ref(as_proto), weakref.ref(ws_proto)]
    del engine, relay, as_proto, ws_proto
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
    for remote in (a_remote, w_remote):  # the relay's sockets were closed when it was freed
        remote.settimeout(1)
        assert remote.recv(1) == b""
        remote.close()
