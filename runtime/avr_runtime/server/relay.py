"""The call data plane in C, for calls in their steady state (``_relay.c`` says why and what it does).

A call is handed over when its caller's leg is slin AudioSocket audio or a mono Opus stream client (whose libopus
encoder and decoder go along) and its provider is STS over plain ``ws://`` (services/handover.py decides, once per
call), and both connections sit at a frame boundary with nothing waiting to be written; the pacer's grid and state and
the queued audio go with it, so the caller hears no gap and no burst. From then on the engine owns both sockets: caller
audio goes to the provider and provider audio is paced to the caller in C. The Python protocol objects stay in charge of
everything else (DTMF, hang-ups, provider events, pings, the close handshake, protocol errors): the engine hands them
those bytes, and their writes go through a ``RelayTransport``. Without the compiled module (no C compiler at install
time) calls stay in Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any, Final, cast

from avr_runtime.audio.buffer import Overflow
from avr_runtime.server.leg import Leg
from avr_runtime.services import metrics
from avr_runtime.services.providers.sts import StsSession

try:
    from avr_runtime.server import _relay
except ImportError:  # built without a C compiler
    _relay = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from avr_runtime.server._relay import CallerSide, Relay
    from avr_runtime.server.call import Call
    from avr_runtime.services.providers.wsclient import WebSocketConnection

AVAILABLE: Final = _relay is not None
AS: Final = 0  # the caller's side of a relay (AudioSocket, or the Opus stream leg)
WS: Final = 1  # the provider WebSocket side


class _Detached(asyncio.Protocol):
    """What the event loop's own transport reports to once its socket has moved to the engine."""


class RelayTransport(asyncio.Transport):
    """A leg's transport after the handover: writes are queued behind the engine's own, in order."""

    def __init__(self, relay: Relay, side: int, protocol: asyncio.BaseProtocol, extra: dict[str, Any]) -> None:
        super().__init__(extra)
        self._relay = relay
        self._side = side
        self._protocol = protocol
        self._closing = False
        self._reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._relay.write(self._side, bytes(data))

    def is_closing(self) -> bool:
        return self._closing or not self._relay.is_open(self._side)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._relay.close(self._side):  # else the engine saw the end first and has reported it
            asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self._reading = False
        self._relay.pause(self._side)

    def resume_reading(self) -> None:
        self._reading = True
        self._relay.resume(self._side)

    def is_reading(self) -> bool:
        return self._reading and self._relay.is_open(self._side)

    def get_write_buffer_size(self) -> int:
        return self._relay.buffered(self._side)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


def _dup(transport: asyncio.Transport) -> int:
    """A duplicate of the transport's socket: once the transport is closed (_detach) the connection stays up."""
    return os.dup(transport.get_extra_info("socket").fileno())


def _detach(transport: asyncio.Transport) -> dict[str, Any]:
    """Close the transport without ending its connection (the engine holds a duplicate); its extra info."""
    extra = {name: transport.get_extra_info(name) for name in ("peername", "sockname")}
    transport.set_protocol(_Detached())
    transport.abort()
    return extra


class Relays:
    """The worker's engine: one descriptor on the event loop for every relayed call."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_message: int, poll_interval: float = 0.0) -> None:
        """``poll_interval`` > 0: the sockets are read on a timer instead of on every event (see FAST_PATH_POLL_MS)."""
        if _relay is None:
            raise RuntimeError("the compiled relay module is not installed")
        self._loop = loop
        self.engine = _relay.Engine(metrics.FRAME_LATENCY.bounds, max_message, poll_interval)
        loop.add_reader(self.engine.fileno(), self.engine.run)

    def offer(self, leg: Leg, call: Call) -> bool:
        """Move the call into the engine if it can go now (``handover.decide`` has said it may: Call.hand_over);
        False to try again later. An OSError (no descriptor left) leaves the call in Python, untouched."""
        session = call.session
        conn = session.connection if isinstance(session, StsSession) else None
        if conn is None:
            return False  # still connecting
        return self.take_over(leg, conn, call)

    def take_over(self, leg: Leg, conn: WebSocketConnection, call: Call) -> bool:
        """Move the call into the engine if both connections are at a clean point now; False to try again later."""
        as_transport, ws_transport = leg.transport, conn.transport
        if as_transport is None or ws_transport is None or not leg.detachable() or not conn.detachable():
            return False
        if as_transport.get_write_buffer_size() or ws_transport.get_write_buffer_size():
            return False
        state = call.pacer.snapshot()
        if state is None:
            return False
        pacer, playout = call.pacer, call.playout
        # both duplicates and the engine first: if any of it fails (EMFILE), the call goes on in Python untouched
        as_fd = _dup(as_transport)
        try:
            ws_fd = _dup(ws_transport)
        except OSError:
            os.close(as_fd)
            raise
        try:
            relay = self.engine.add(
                cast("CallerSide", {"fd": as_fd, "protocol": leg, **leg.relay_options()}),  # the leg's own keys
                {"fd": ws_fd, "protocol": conn},
                {"capacity": playout.capacity, "drop_newest": playout.policy is Overflow.DROP_NEWEST},
                {
                    "period": pacer.period,
                    "margin": pacer.margin,
                    "grace_window": pacer.grace,
                    "max_slew": pacer.max_slew,
                    "next_slot": state.next_slot,
                    "earliest": state.earliest,
                    "talking": state.talking,
                    "grace": state.grace,
                    "draining": state.draining,
                    "backlog_ticks": state.backlog_ticks,
                    "backlog_min": state.backlog_min,
                    "backlog_max": state.backlog_max,
                    "hiccup": state.hiccup,
                },
            )
        except OSError:
            for fd in (as_fd, ws_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        try:
            relay.restore(*playout.snapshot())
        except BaseException:
            relay.close(AS)  # closes the duplicates; the call goes on in Python
            relay.close(WS)
            raise
        as_extra, ws_extra = _detach(as_transport), _detach(ws_transport)
        pacer.stop()
        leg.relayed(RelayTransport(relay, AS, cast(asyncio.BaseProtocol, leg), as_extra))  # legs are Protocols
        conn.relayed(RelayTransport(relay, WS, conn, ws_extra))
        call.relayed(relay)
        metrics.CALLS_RELAYED.inc()
        return True

    def sync_metrics(self) -> None:
        """Add what the engine counted since the last scrape to the Prometheus metrics."""
        got = self.engine.take()
        for name, metric in (
            ("out_audio", metrics.FRAMES_OUT_AUDIO),
            ("out_silence", metrics.FRAMES_OUT_SILENCE),
            ("late", metrics.FRAMES_LATE),
            ("dropped_latency", metrics.FRAMES_DROPPED.labels("latency")),
            ("dropped_overflow", metrics.DROPPED_OVERFLOW),
            ("dropped_backpressure", metrics.DROPPED_BACKPRESSURE),
        ):
            if got[name]:
                metric.inc(got[name])
        metrics.FRAME_LATENCY.merge(got["latency"], got["latency_sum"])

    @property
    def active(self) -> int:
        return int(self.engine.active())

    def close(self) -> None:
        self.sync_metrics()
        self._loop.remove_reader(self.engine.fileno())
        self.engine.close()
