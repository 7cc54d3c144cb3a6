"""How a call ends on the Asterisk leg, and what the worker answers a G.711 caller with, as Asterisk reads it.

Asterisk 22's res/res_audiosocket.c (``ast_audiosocket_receive_frame_with_hangup``) accepts only audio and a hangup
from the server: any other message is logged as an ERROR and fails the read, and every 0x10 frame is read as 8 kHz
slin, whatever the channel's codec. The byte streams in tests/vectors/asterisk/ are what a real one sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from vectors import VECTORS, split_frames

from avr_runtime.config import Settings
from avr_runtime.protocol import audiosocket as wire
from avr_runtime.protocol import websocket as ws
from avr_runtime.server.audiosocket import AudioSocketConnection, end_code
from avr_runtime.server.context import WorkerContext


@pytest.mark.parametrize(
    ("code", "error_frames", "sent"),
    [
        (None, False, b"\x00\x00\x00"),
        (None, True, b"\x00\x00\x00"),
        (wire.ErrorCode.PROVIDER_UNAVAILABLE, False, b"\x00\x00\x00"),
        (wire.ErrorCode.PROVIDER_UNAVAILABLE, True, b"\xff\x00\x01\x04\x00\x00\x00"),
        (wire.ErrorCode.AT_CAPACITY, True, b"\xff\x00\x01\x02\x00\x00\x00"),
    ],
)
def test_a_call_ends_with_a_plain_hangup_unless_error_frames_are_on(
    code: int | None, error_frames: bool, sent: bytes
) -> None:
    assert wire.goodbye(code, error_frames) == sent


def test_error_frames_are_off_by_default() -> None:
    assert Settings().audiosocket_error_frames is False
    assert Settings(audiosocket_error_frames="true").audiosocket_error_frames is True


@pytest.mark.parametrize(
    ("reason", "given", "code"),
    [
        ("hangup", None, None),
        ("provider_closed", None, None),
        ("provider_unavailable", wire.ErrorCode.PROVIDER_UNAVAILABLE, wire.ErrorCode.PROVIDER_UNAVAILABLE),
        ("provider_failed:dropped", wire.ErrorCode.PROVIDER_UNAVAILABLE, wire.ErrorCode.PROVIDER_UNAVAILABLE),
        ("protocol_error:unknown_type", None, wire.ErrorCode.PROTOCOL),
    ],
)
def test_the_code_of_a_call_s_end(reason: str, given: int | None, code: int | None) -> None:
    assert end_code(reason, given) == code


@pytest.mark.parametrize(
    ("close_code", "label"),
    [(1000, None), (ws.NO_STATUS, None), (None, "dropped"), (1001, "close_1001"), (1011, "close_1011")],
)
def test_a_provider_s_end_is_a_goodbye_only_with_a_normal_close(close_code: int | None, label: str | None) -> None:
    assert ws.abnormal_end(close_code) == label


class Transport:
    """Records what the connection writes."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass


@pytest.mark.parametrize(("name", "law"), [("dial-ulaw", "ulaw"), ("dial-alaw", "alaw")])
async def test_a_g711_caller_is_read_as_g711_and_answered_in_slin(name: str, law: str) -> None:
    """Asterisk's c(ulaw) and c(alaw) channels send G.711 in 0x10 frames (the recorded start of a call) and read
    the 0x10 frames they get as slin: the worker detects the caller's law, and its replies are 320 bytes of slin."""
    ctx = WorkerContext.create(Settings(fast_path=False))
    conn = AudioSocketConnection(ctx)
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    head = b"".join(split_frames((VECTORS / f"{name}.bin").read_bytes())[:3])  # the UUID and two audio frames
    conn.data_received(head)
    assert conn.law == law
    speech = bytes(range(256)) + bytes(64)
    conn.send_frame(speech)
    assert transport.written[-1] == b"\x10\x01\x40" + speech, "slin, not re-encoded as G.711"
    assert conn.call is not None
    conn.call.end("hangup")
    await asyncio.sleep(0.05)
    assert transport.written[-1] == wire.HANGUP_FRAME, "a plain hangup: the call did not fail"
    await ctx.close()
