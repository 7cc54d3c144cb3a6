"""The AudioSocket leg with wideband callers, in process: what the call gets, what the caller gets, the relay."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from avr_runtime.config import Settings
from avr_runtime.protocol import audiosocket as wire
from avr_runtime.server.audiosocket import AudioSocketConnection
from avr_runtime.server.context import WorkerContext


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0


Leg = tuple[AudioSocketConnection, FakeTransport, list[bytes]]


@pytest.fixture
async def make_leg() -> AsyncIterator[Any]:
    legs: list[AudioSocketConnection] = []
    contexts: list[WorkerContext] = []

    def make(**settings: Any) -> Leg:
        ctx = WorkerContext.create(Settings(**settings))
        contexts.append(ctx)
        leg = AudioSocketConnection(ctx)
        transport = FakeTransport()
        leg.connection_made(transport)  # type: ignore[arg-type]
        leg.data_received(wire.uuid_frame(uuid.uuid4()))
        assert leg.call is not None
        fed: list[bytes] = []
        leg.call.feed_audio = fed.append  # type: ignore[method-assign,assignment]
        legs.append(leg)
        return leg, transport, fed

    yield make
    for leg in legs:
        if leg.call is not None:
            leg.call.end("hangup")
        if leg.task is not None:
            await asyncio.wait_for(leg.task, 5)
    for ctx in contexts:
        await ctx.close()


def tone16(n_frames: int) -> list[bytes]:
    t = np.arange(320 * n_frames) / 16000
    x = (8000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes()
    return [x[i : i + 640] for i in range(0, len(x), 640)]


async def test_slin16_frames_reach_the_call_as_8k_and_replies_go_out_as_slin16(make_leg: Any) -> None:
    leg, transport, fed = make_leg()
    for frame in tone16(10):
        leg.data_received(wire.audio_frame(frame, 0x12))
    assert [len(f) for f in fed] == [320] * 10, "20 ms of 8 kHz per 20 ms frame, for the provider"
    assert not leg.detachable(), "never offered to the compiled data plane"
    transport.written.clear()
    leg.send_frame(bytes(320))
    frames = wire.FrameParser().feed(bytes(transport.written))
    assert [(f.rate, len(f.payload)) for f in frames] == [(16000, 640)]


async def test_8k_slin_is_still_detachable(make_leg: Any) -> None:
    leg, _transport, fed = make_leg()
    leg.data_received(wire.audio_frame(bytes(320)))
    leg.data_received(wire.audio_frame(bytes(320)))
    assert [len(f) for f in fed] == [320, 320]
    assert leg.detachable() and leg.edge is None


@pytest.mark.parametrize("fmt", ["auto", "slin16"])
async def test_0x10_frames_taken_as_16k(make_leg: Any, fmt: str) -> None:
    leg, transport, fed = make_leg(audiosocket_format=fmt)
    for frame in tone16(3):
        leg.data_received(wire.audio_frame(frame))
    assert [len(f) for f in fed] == [320] * 3
    assert not leg.detachable()
    transport.written.clear()
    leg.send_frame(bytes(320))
    assert [(f.rate, len(f.payload)) for f in wire.FrameParser().feed(bytes(transport.written))] == [(8000, 320)]


async def test_0x10_frames_taken_as_16k_answered_at_16k_when_asked(make_leg: Any) -> None:
    leg, transport, _fed = make_leg(audiosocket_slin16_reply="slin16")
    leg.data_received(wire.audio_frame(tone16(1)[0]))
    transport.written.clear()
    leg.send_frame(bytes(320))
    assert [(f.rate, len(f.payload)) for f in wire.FrameParser().feed(bytes(transport.written))] == [(8000, 640)]


async def test_forced_slin_reads_any_0x10_size_as_8k_but_0x12_by_its_type(make_leg: Any) -> None:
    leg, _t, fed = make_leg(audiosocket_format="slin")
    leg.data_received(wire.audio_frame(bytes(640)))
    assert [len(f) for f in fed] == [640] and leg.edge is None
    other, _t2, fed2 = make_leg(audiosocket_format="slin")
    other.data_received(wire.audio_frame(bytes(640), 0x12))
    assert [len(f) for f in fed2] == [320] and other.edge is not None


async def test_a_type_change_ends_the_call_with_a_reason(make_leg: Any) -> None:
    leg, _transport, fed = make_leg()
    leg.data_received(wire.audio_frame(tone16(1)[0], 0x12))
    leg.data_received(wire.audio_frame(bytes(320)))
    assert len(fed) == 1
    assert leg.task is not None
    assert await asyncio.wait_for(leg.task, 5) == "protocol_error:rate_changed"


async def test_replies_take_the_caller_s_type_from_its_first_audio_frame(make_leg: Any) -> None:
    leg, transport, _fed = make_leg()
    transport.written.clear()
    leg.send_frame(bytes(320))  # before any audio: the call is answered at once, as 8 kHz slin (0x10)
    leg.data_received(wire.audio_frame(bytes(640), 0x12))
    leg.send_frame(bytes(320))
    frames = wire.FrameParser(one_type=False).feed(bytes(transport.written))
    assert [f.rate for f in frames] == [8000, 16000]
