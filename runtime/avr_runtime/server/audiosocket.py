"""The Asterisk leg: an asyncio Protocol per AudioSocket TCP connection.

A Protocol (not the streams API) because this is the hot path: no reader task or buffer copy between the socket and
the parser, so each frame costs one callback.
Malformed input ends this connection's call with a logged reason; nothing else is affected.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from avr_runtime.audio import g711
from avr_runtime.config import AudioSocketFormat
from avr_runtime.protocol import audiosocket as wire
from avr_runtime.protocol.audiosocket import ErrorCode, Kind, ProtocolError
from avr_runtime.server.call import Call
from avr_runtime.server.context import WorkerContext
from avr_runtime.server.leg import Leg
from avr_runtime.server.wideband import SUPPORTED_RATES, RateEdge, edge_for
from avr_runtime.services import metrics
from avr_runtime.services.handover import LegFormat

log = logging.getLogger(__name__)

_ULAW_FRAME = 160  # 20 ms of 8-bit G.711: how AVR's core tells G.711 from slin (320 bytes)
_SLIN_HEADER = bytes((Kind.AUDIO, 0x01, 0x40))  # audio, 320 bytes
_SLIN_FRAME = 3 + 320


def end_code(reason: str, error_code: int | None) -> int | None:
    """The error code of a call that ends for ``reason`` (None: it did not fail)."""
    if error_code is not None:
        return error_code
    return ErrorCode.PROTOCOL if reason.startswith("protocol_error") else None


class AudioSocketConnection(asyncio.Protocol, Leg):
    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.parser = wire.FrameParser(SUPPORTED_RATES)
        self.transport: asyncio.Transport | None = None
        self.call: Call | None = None
        self.task: asyncio.Task[str] | None = None
        self.source = "?"
        self.law: str | None = None  # None = slin; "ulaw"/"alaw" once detected or configured
        self._format_known = False
        self._audio_seen = False  # the first audio frame fixes the call's rate and format
        self.edge: RateEdge | None = None  # a wideband call's resamplers (server/wideband.py)
        self._slin = False  # a call exists and its audio is known to be slin: the fast path in data_received
        self._format: LegFormat | None = None  # the caller's audio, once its first frame is known
        self._relay_wanted = False  # the call is offered to the C relay between frames until it is decided
        self._holds_slot = False
        self._paused = False
        self._closed = False

    # --- admission ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass
        peer = transport.get_extra_info("peername")
        self.source = peer[0] if peer else "?"
        ctx = self.ctx
        if ctx.draining:
            self._refuse("draining", ErrorCode.DRAINING)
            return
        if ctx.call_limiter.hit(self.source) is not None:
            metrics.RATE_LIMITED.labels("call").inc()
            self._refuse("rate_limited", ErrorCode.RATE_LIMITED)
            return
        if not ctx.slots.try_acquire():
            self._refuse("at_capacity", ErrorCode.AT_CAPACITY)
            return
        self._holds_slot = True
        ctx.update_readiness()
        fmt = ctx.settings.audiosocket_format
        if fmt is not AudioSocketFormat.AUTO:
            self.law = fmt.value if fmt in (AudioSocketFormat.ULAW, AudioSocketFormat.ALAW) else None
            self._format_known = True

    def _refuse(self, reason: str, code: ErrorCode) -> None:
        metrics.CALLS_REFUSED.labels(reason).inc()
        log.warning("call from %s refused: %s", self.source, reason, extra={"reason": reason})
        assert self.transport is not None
        self.transport.write(wire.goodbye(code, self.ctx.settings.audiosocket_error_frames))
        self.transport.close()
        self._closed = True

    def _release(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self.ctx.slots.release()
            self.ctx.update_readiness()

    # --- input ---

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if data[:3] == _SLIN_HEADER and len(data) == _SLIN_FRAME and self._slin and not self.parser.pending:
            # hot path: one read, one 20 ms slin frame of a call whose format is known
            self.call.feed_audio(data[3:])  # type: ignore[union-attr]  # _slin implies a call
            if self._relay_wanted:
                self._try_relay()
            return
        try:
            try:
                frames = self.parser.feed(data)
            except ProtocolError as exc:
                for frame in exc.frames:
                    self._dispatch(*frame)
                raise
            for frame in frames:
                self._dispatch(*frame)
        except ProtocolError as exc:
            self._protocol_error(exc)

    def _dispatch(self, kind: Kind, payload: bytes, rate: int) -> None:
        call = self.call
        if kind is Kind.AUDIO:
            if call is None:
                raise ProtocolError("audio_before_uuid", "audio received before the call identifier")
            if not self._audio_seen:
                self._detect(payload, rate)
            if self.edge is not None:
                payload = self.edge.inbound(payload)
                if not payload:
                    return
            elif self.law is not None:
                payload = g711.ulaw_to_pcm(payload) if self.law == "ulaw" else g711.alaw_to_pcm(payload)
            elif len(payload) % 2:
                raise ProtocolError("bad_length", f"slin payload of odd length {len(payload)}")
            call.feed_audio(payload)
        elif kind is Kind.UUID:
            if call is not None:
                raise ProtocolError("duplicate_uuid", "a second call identifier on one connection")
            try:
                call_uuid = wire.parse_uuid(payload)
            except ValueError as exc:
                raise ProtocolError("bad_uuid", str(exc)) from None
            self.call = Call(self.ctx, call_uuid, self, "audiosocket", self.source)
            self._slin = False  # until the first audio frame says it is 8 kHz slin
            self._relay_wanted = True
            self.task = asyncio.ensure_future(self.call.run())
        elif kind is Kind.DTMF:
            if call is None:
                raise ProtocolError("dtmf_before_uuid", "DTMF received before the call identifier")
            call.dtmf(wire.parse_dtmf(payload))
        elif kind is Kind.HANGUP:
            if call is not None:
                call.end("hangup")
            else:
                self._close()
        elif kind is Kind.ERROR:
            code = payload.hex() or "none"
            log.warning("Asterisk reported an error (code %s)", code, extra={"uuid": call.uuid if call else None})
            if call is not None:
                call.end("asterisk_error")
            else:
                self._close()

    def _detect(self, payload: bytes, rate: int) -> None:
        """The first audio frame: its type and size, with AUDIOSOCKET_FORMAT, fix what the call's audio is."""
        self._audio_seen = True
        call_uuid = self.call.uuid if self.call else "?"
        if rate != 8000:
            self.law = None  # 0x11-0x18 are slin at their rate, whatever AUDIOSOCKET_FORMAT says of 0x10
        elif not self._format_known and len(payload) == _ULAW_FRAME:
            self.law = g711.guess_law(payload)
            log.info("call %s: G.711 %s detected", call_uuid, self.law)
        if self.law is None:
            self.edge = edge_for(rate, len(payload), self.ctx.settings, call_uuid)
        self._format_known = True
        self._slin = self.law is None and self.edge is None  # 8 kHz slin: the hot path, and the relay may take it
        self._format = LegFormat("audiosocket", self.law or "slin", self.edge.rate if self.edge is not None else 8000)
        if self._relay_wanted and not self._slin:
            self._try_relay()  # decided (and counted) now: this call's audio stays in Python

    def _protocol_error(self, exc: ProtocolError) -> None:
        metrics.PROTOCOL_ERRORS.labels("audiosocket", exc.reason).inc()
        call_uuid = self.call.uuid if self.call else None
        log.warning(
            "malformed AudioSocket input from %s: %s",
            self.source,
            exc,
            extra={"uuid": call_uuid, "reason": exc.reason},
        )
        self._closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()  # nothing after the bad frame is read as audio (the relay would forward it)
        if self.call is not None:
            self.call.end(f"protocol_error:{exc.reason}")
        elif self.transport is not None:
            self.transport.write(wire.goodbye(ErrorCode.PROTOCOL, self.ctx.settings.audiosocket_error_frames))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed:
            try:
                self.parser.close()
            except ProtocolError as perr:
                metrics.PROTOCOL_ERRORS.labels("audiosocket", perr.reason).inc()
                log.warning("AudioSocket from %s: %s", self.source, perr, extra={"reason": perr.reason})
        self._closed = True
        if self.call is not None:
            self.call.end("disconnected")
        else:
            self._release()
        self.transport = None  # a relayed call's transport refers back to this protocol

    # --- the C relay (server/relay.py) ---

    def _try_relay(self) -> None:
        assert self.call is not None
        if self.call.hand_over(self):
            self._relay_wanted = False

    def handover_format(self) -> LegFormat | None:
        return self._format

    def detachable(self) -> bool:
        """A slin call between frames, nothing unsent, not closing."""
        transport = self.transport
        return (
            self._slin
            and not self._closed
            and not self._paused
            and not self.parser.pending
            and transport is not None
            and not transport.is_closing()
        )

    def relayed(self, transport: asyncio.Transport) -> None:
        """From now on the relay reads the socket and calls ``data_received`` with what is not slin audio."""
        self.transport = transport
        self._slin = False  # audio reaching data_received now is what the relay refused: the general parser

    def relay_options(self) -> dict[str, Any]:
        return {}

    # --- flow control from the kernel socket buffer ---

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    # --- Leg ---

    def released(self) -> None:
        self.call = None

    def send_frame(self, frame: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._paused:  # Asterisk is not reading: drop rather than buffer without bound
            metrics.DROPPED_BACKPRESSURE.inc()
            return
        if self.edge is not None:
            transport.write(self.edge.outbound(frame))
            return
        # slin whatever the caller sends: Asterisk reads every 0x10 frame as slin (res_audiosocket.c), G.711 too
        transport.write(wire.audio_frame(frame))

    def hang_up(self, reason: str, error_code: int | None) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(wire.goodbye(end_code(reason, error_code), self.ctx.settings.audiosocket_error_frames))
        self._close()

    def _close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()
        self._release()
