"""Shared by the compiled data plane's tests (tests/unit/test_relay*.py): the remote peers on real loopback TCP
connections, the recorder standing for the Python protocol objects, and frames built from the specs."""

from __future__ import annotations

import asyncio
import base64
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from avr_runtime.protocol import audiosocket as wire
from avr_runtime.protocol import websocket as ws
from avr_runtime.services import metrics

if TYPE_CHECKING:
    from avr_runtime.server._relay import CallerSide, Engine, Relay

PERIOD = 0.02
MARGIN = 0.004
MAX_SLEW = 0.002
FRAME = 320
SILENCE = bytes(FRAME)
BOUNDS = metrics.FRAME_LATENCY.bounds
MAX_MESSAGE = ws.DEFAULT_MAX_MESSAGE
PREFIX = b'{"type":"audio","audio":"'
SUFFIX = b'"}'


def pcm(n: int, seed: int = 0) -> bytes:
    """``n`` bytes of audio with no zero byte, so no frame of it is mistaken for silence."""
    rng = random.Random(seed)
    return bytes(rng.randrange(1, 256) for _ in range(n))


def audio_message(data: bytes) -> bytes:
    """An STS audio message, built from the spec rather than with the module under test's encoder."""
    return PREFIX + base64.b64encode(data) + SUFFIX


def server_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, length: int | None = None) -> bytes:
    """A frame as a WebSocket server sends it (unmasked), minimal length encoding."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        return bytes([first, n]) + payload
    if n < 65536:
        return bytes([first, 126]) + struct.pack("!H", n) + payload
    return bytes([first, 127]) + struct.pack("!Q", n) + payload


@dataclass
class ClientFrame:
    """One client (masked) frame as it was on the wire."""

    first: int
    second: int
    header: bytes  # up to and including the masking key
    payload: bytes  # unmasked

    @property
    def fin(self) -> bool:
        return bool(self.first & 0x80)

    @property
    def opcode(self) -> int:
        return self.first & 0x0F

    @property
    def masked(self) -> bool:
        return bool(self.second & 0x80)


def take_client_frames(buf: bytearray) -> list[ClientFrame]:
    """Remove and decode the whole frames at the front of ``buf`` (the slow, obvious way)."""
    out = []
    while len(buf) >= 2:
        first, second = buf[0], buf[1]
        n, pos = second & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            (n,) = struct.unpack_from("!H", buf, 2)
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                break
            (n,) = struct.unpack_from("!Q", buf, 2)
            pos = 10
        key = bytes(buf[pos : pos + 4]) if second & 0x80 else b"\0\0\0\0"
        pos += 4 if second & 0x80 else 0
        if len(buf) < pos + n:
            break
        body = bytes(b ^ key[i % 4] for i, b in enumerate(buf[pos : pos + n]))
        out.append(ClientFrame(first, second, bytes(buf[:pos]), body))
        del buf[: pos + n]
    return out


# --- the two remote peers ---


class Peer(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class AsteriskPeer(Peer):
    """Parses what the worker sends as AudioSocket frames, each stamped with the time its bytes arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.parser = wire.FrameParser()
        self.frames: list[wire.Frame] = []
        self.arrivals: list[float] = []

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        super().data_received(data)
        for frame in self.parser.feed(data):
            self.frames.append(frame)
            self.arrivals.append(now)

    def audio(self, start: int = 0) -> list[bytes]:
        return [f.payload for f in self.frames[start:] if f.kind is wire.Kind.AUDIO]


class ProviderPeer(Peer):
    """Decodes what the worker sends as client WebSocket frames."""

    def __init__(self) -> None:
        super().__init__()
        self._pending = bytearray()
        self.frames: list[ClientFrame] = []

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._pending += data
        self.frames += take_client_frames(self._pending)


# --- the protocol objects the engine hands bytes to ---


class Recorder:
    """Stands for AudioSocketConnection / WebSocketConnection: records data_received and connection_lost, in order.

    ``on_data`` runs after each data_received, as the real protocol's reaction would (e.g. close the side).
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.on_data: Callable[[bytes], object] | None = None

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.events.append(("data", data))
        if self.on_data is not None:
            self.on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))

    @property
    def data(self) -> list[bytes]:
        return [cast(bytes, v) for k, v in self.events if k == "data"]

    @property
    def joined(self) -> bytes:
        return b"".join(self.data)

    @property
    def lost(self) -> list[object]:
        return [v for k, v in self.events if k == "lost"]


def tcp_pair(bufsize: int = 0) -> tuple[socket.socket, socket.socket]:
    """(the worker's end, the remote end) of one loopback TCP connection; ``bufsize`` shrinks the kernel buffers
    from the worker to the remote (its send buffer, the remote's receive buffer)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        remote = socket.socket()
        if bufsize:
            remote.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
        remote.connect(listener.getsockname())
        mine, _ = listener.accept()
    if bufsize:
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
    remote.setblocking(False)
    return mine, remote


async def until(cond: Callable[[], bool], within: float = 2.0) -> bool:
    """Wait (bounded) for ``cond``; returns its final value so callers can assert on it."""
    deadline = time.monotonic() + within
    for _ in range(int(within / 0.002) + 1):
        if cond() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.002)
    return cond()


async def settle(seconds: float = 0.05) -> None:
    """Give the engine a few passes to (not) do something."""
    await asyncio.sleep(seconds)


def close_rig(engine: Any, *peers: Peer) -> None:
    """A test's engine off the event loop and closed (with the worker's ends of its sockets), then the peers."""
    asyncio.get_running_loop().remove_reader(engine.fileno())
    engine.close()
    for peer in peers:
        if peer.transport is not None:
            peer.transport.abort()


def add_relay(
    engine: Engine,
    caller: CallerSide,
    ws_fd: int,
    ws_protocol: object,
    *,
    next_slot: float,
    earliest: float,
    capacity: int,
    drop_newest: bool = False,
    margin: float = MARGIN,
    max_slew: float = MAX_SLEW,
    grace_window: float = -1.0,
) -> Relay:
    """Engine.add with the tests' pacer (a fresh one: no state carried over) and a provider leg of ``ws_fd``."""
    return engine.add(
        caller,
        {"fd": ws_fd, "protocol": cast(Any, ws_protocol)},
        {"capacity": capacity, "drop_newest": drop_newest},
        {
            "period": PERIOD,
            "margin": margin,
            "max_slew": max_slew,
            "grace_window": grace_window,
            "next_slot": next_slot,
            "earliest": earliest,
        },
    )
