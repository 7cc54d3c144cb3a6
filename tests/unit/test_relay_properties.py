"""Property-based fuzzing of the compiled data plane's framing (avr_runtime/server/_relay.c) through real sockets:
streams of frames in arbitrary splits, and arbitrary bytes, from both Asterisk's side and the provider's. The
engine relays exactly the audio and hands every other byte to Python, in order; garbage never crashes it. Run
under AddressSanitizer by scripts/sanitize as well, where any memory error aborts the run.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from relay_rig import (
    BOUNDS,
    MARGIN,
    MAX_MESSAGE,
    MAX_SLEW,
    Recorder,
    add_relay,
    audio_message,
    server_frame,
    take_client_frames,
    tcp_pair,
)

from avr_runtime.protocol import audiosocket as wire
from avr_runtime.protocol import websocket as ws

relay = pytest.importorskip("avr_runtime.server._relay", reason="built without a C compiler")

settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@dataclass
class Plane:
    engine: Any
    relay: Any
    asterisk: socket.socket
    provider: socket.socket
    as_proto: Recorder
    ws_proto: Recorder

    def pump(self) -> None:
        """Run the engine until it has read everything sent so far (as the event loop would call it)."""
        quiet = 0
        while quiet < 3:
            ready, _, _ = select.select([self.engine.fileno()], [], [], 0.005)
            if ready:
                self.engine.run()
                quiet = 0
            else:
                quiet += 1

    def sent_to_provider(self) -> bytes:
        got = bytearray()
        self.provider.settimeout(0.05)
        try:
            while data := self.provider.recv(1 << 20):
                got += data
        except (TimeoutError, BlockingIOError):
            pass
        return bytes(got)


@contextmanager
def plane() -> Iterator[Plane]:
    engine = relay.Engine(BOUNDS, MAX_MESSAGE)
    as_mine, as_remote = tcp_pair()
    ws_mine, ws_remote = tcp_pair()
    as_proto, ws_proto = Recorder(), Recorder()
    now = time.monotonic()
    r = add_relay(
        engine,
        {"fd": as_mine.detach(), "protocol": as_proto},
        ws_mine.detach(),
        ws_proto,
        next_slot=now + 3600,  # no pacer slot: only the framing is under test
        earliest=now,
        capacity=100_000,
        drop_newest=False,
        margin=MARGIN,
        max_slew=MAX_SLEW,
    )
    try:
        yield Plane(engine, r, as_remote, ws_remote, as_proto, ws_proto)
    finally:
        engine.close()
        as_remote.close()
        ws_remote.close()


def send_split(sock: socket.socket, data: bytes, cuts: list[int], p: Plane) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    for a, b in itertools.pairwise(edges):
        if b > a:
            sock.setblocking(True)
            sock.sendall(data[a:b])
            sock.setblocking(False)
            p.pump()


#: Any even-sized slin payload up to 120 ms is audio the engine relays (Asterisk's last frame of a playback can be
#: short); an odd size is malformed slin, which Python's parser refuses.
SLIN = st.integers(1, wire.MAX_AUDIO_PAYLOAD // 2).flatmap(
    lambda n: st.binary(min_size=2 * n, max_size=2 * n).map(lambda b: bytes(x or 1 for x in b))
)
asterisk_frames = st.one_of(
    SLIN.map(lambda pcm: (wire.audio_frame(pcm), True)),
    st.sampled_from(b"0123456789*#").map(lambda d: (wire.encode(wire.Kind.DTMF, bytes([d])), False)),
    st.integers(0, 100).map(lambda n: (wire.audio_frame(bytes(2 * n + 1)), False)),
    st.binary(max_size=4).map(lambda b: (wire.encode(wire.Kind.ERROR, b), False)),
)


@given(st.lists(asterisk_frames, max_size=12), st.lists(st.integers(min_value=0), max_size=12))
@example([(wire.audio_frame(bytes(range(1, 161)) * 2), True), (b"\x03\x00\x01#", False)], [1, 2, 3, 322, 324])
def test_caller_audio_is_relayed_and_every_other_frame_reaches_python_in_order(
    frames: list[tuple[bytes, bool]], cuts: list[int]
) -> None:
    with plane() as p:
        send_split(p.asterisk, b"".join(f for f, _ in frames), cuts, p)
        got = bytearray(p.sent_to_provider())
        messages = [f.payload for f in take_client_frames(got)]
        assert messages == [audio_message(f[3:]) for f, audio in frames if audio]
        assert p.as_proto.joined == b"".join(f for f, audio in frames if not audio)
        assert p.relay.frames_in == sum(1 for _, audio in frames if audio)


provider_frames = st.one_of(
    st.binary(min_size=1, max_size=4)
    .map(lambda n: bytes(320 * n[0] % 1920 or 320))
    .map(lambda pcm: (server_frame(ws.TEXT, audio_message(pcm)), len(pcm) // 320)),
    st.binary(max_size=40).map(
        lambda b: (server_frame(ws.TEXT, b'{"type":"transcript","x":"' + b.hex().encode() + b'"}'), 0)
    ),
    st.binary(max_size=125).map(lambda b: (server_frame(ws.PING, b), 0)),
    st.binary(max_size=300).map(lambda b: (server_frame(ws.BINARY, b), 0)),
)


@given(st.lists(provider_frames, max_size=10), st.lists(st.integers(min_value=0), max_size=12))
def test_provider_audio_is_queued_and_every_other_frame_reaches_python_in_order(
    frames: list[tuple[bytes, int]], cuts: list[int]
) -> None:
    with plane() as p:
        send_split(p.provider, b"".join(f for f, _ in frames), cuts, p)
        assert p.relay.queued == sum(n for _, n in frames)
        assert p.ws_proto.joined == b"".join(f for f, n in frames if not n)


@given(st.binary(max_size=3000), st.binary(max_size=3000), st.lists(st.integers(min_value=0), max_size=8))
@example(b"\x10\xff\xff" + bytes(100), b"\x81\x7f" + (1 << 63).to_bytes(8, "big"), [])
@example(b"\x10\x01", b"\x81\x7e\x01", [1])
def test_arbitrary_bytes_on_both_sides_never_break_the_engine(a: bytes, b: bytes, cuts: list[int]) -> None:
    with plane() as p:
        # Python's answer to input it refuses is to stop reading that side, as the real legs do
        p.as_proto.on_data = lambda _data: p.relay.pause(relay.AS)
        p.ws_proto.on_data = lambda _data: p.relay.pause(relay.WS)
        send_split(p.asterisk, a, cuts, p)
        send_split(p.provider, b, cuts, p)
        assert len(p.as_proto.joined) <= len(a) and len(p.ws_proto.joined) <= len(b)
        p.relay.write(relay.AS, wire.HANGUP_FRAME)
        assert p.relay.close(relay.AS) and p.relay.close(relay.WS)
        p.pump()
        assert p.engine.active() == 0
