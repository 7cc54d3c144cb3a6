"""The WebSocket stream leg: clients that send and receive Opus, PCM16 or G.711 frames instead of AudioSocket.

Binary messages carry audio (one codec frame each, 20 ms recommended); text messages carry control as JSON:
``{"type":"dtmf","digit":"5"}`` and ``{"type":"hangup"}``. The worker answers with paced 20 ms frames in the same codec.

Backpressure: outbound frames wait in a queue of ``STREAM_QUEUE_FRAMES`` once the socket's buffers are full; a
client that reads slower than real time loses the oldest frames (counted) instead of growing the worker's memory.
A steady Opus call on an STS provider moves to the compiled data plane (server/relay.py), codec state and all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections import deque
from typing import Any, Final

import orjson
from aiohttp import web

from avr_runtime.audio import g711, pcm
from avr_runtime.audio.opus import OpusDecoder, OpusEncoder, OpusFrameError
from avr_runtime.audio.resample import Downsampler, Upsampler
from avr_runtime.config import Codec, Settings
from avr_runtime.protocol import websocket as wire
from avr_runtime.server.call import Call
from avr_runtime.server.context import WorkerContext
from avr_runtime.server.leg import Leg
from avr_runtime.services import metrics
from avr_runtime.services.handover import LegFormat

log = logging.getLogger(__name__)

SEND_BUFFER_BYTES: Final = 32 * 1024
WRITE_HIGH_WATER: Final = 8 * 1024  # bytes in the transport before frames wait in the bounded queue
MAX_MESSAGE: Final = 64 * 1024  # larger than any frame of any codec at 20 ms
CLOSE_WAIT: Final = 2.0  # seconds to wait for the client's close frame after ours
SILENCE_SETTLE_FRAMES: Final = 5
_SILENCE_8K = pcm.silence(pcm.SLIN8_FRAME_BYTES)


class StreamCodec:
    """Converts between the client's codec and the call's PCM16 8 kHz mono.

    Opus needs no resampler: an Opus stream has no fixed sample rate, so the encoder takes the call's 8 kHz audio
    and the decoder renders the client's packets straight at 8 kHz, whatever rate the client uses. That is the
    audio the providers get anyway, and it saves two resamplers and the larger work of a wideband encoder on every
    frame (encoding is most of an Opus call's cost: bench/README.md).
    """

    def __init__(self, codec: Codec, settings: Settings) -> None:
        self.codec = codec
        g711_leg = codec in (Codec.ULAW, Codec.ALAW)
        self.rate = 8000 if g711_leg else settings.audio_sample_rate  # what the client sends and receives
        self.channels = 1 if g711_leg else settings.audio_channels
        pcm16_wide = codec is Codec.PCM16 and self.rate == 16000
        self._up = Upsampler() if pcm16_wide else None
        self._down = Downsampler() if pcm16_wide else None
        self._enc: OpusEncoder | None = None
        self._dec: OpusDecoder | None = None
        if codec is Codec.OPUS:
            self._enc = OpusEncoder(8000, self.channels, settings.audio_bitrate, complexity=settings.opus_complexity)
            self._dec = OpusDecoder(8000, self.channels)
        self._silent_frames = 0
        self._silence_packet: bytes | None = None

    def decode(self, data: bytes) -> bytes:
        if self._dec is not None:
            raw = self._dec.decode(data)
        elif self.codec is Codec.ULAW:
            return g711.ulaw_to_pcm(data)
        elif self.codec is Codec.ALAW:
            return g711.alaw_to_pcm(data)
        else:
            if len(data) % (2 * self.channels):
                raise ValueError(f"PCM16 message of {len(data)} bytes is not whole samples")
            raw = data
        if self.channels == 2:
            raw = pcm.to_mono(raw)
        return self._down.process(raw) if self._down is not None else raw

    def encode(self, frame8k: bytes) -> bytes:
        if self.codec is Codec.ULAW:
            return g711.pcm_to_ulaw(frame8k)
        if self.codec is Codec.ALAW:
            return g711.pcm_to_alaw(frame8k)
        if self._enc is not None:
            return self._encode_opus(frame8k)
        out = self._up.process(frame8k) if self._up is not None else frame8k
        return pcm.to_stereo(out) if self.channels == 2 else out

    def _encode_opus(self, frame8k: bytes) -> bytes:
        """Digital silence (the pacer's idle frames) is encoded until the encoder has settled on it, then the same
        packet is repeated without running the encoder: an idle agent costs almost nothing."""
        assert self._enc is not None
        if frame8k != _SILENCE_8K:
            self._silent_frames = 0
            self._silence_packet = None
        elif self._silence_packet is not None:
            return self._silence_packet
        else:
            self._silent_frames += 1
        packet = self._enc.encode(pcm.to_stereo(frame8k) if self.channels == 2 else frame8k)
        if self._silent_frames >= SILENCE_SETTLE_FRAMES:
            self._silence_packet = packet
        return packet

    @property
    def format(self) -> LegFormat:
        """What ``handover.decide`` reads of this leg (the data plane carries mono Opus only)."""
        return LegFormat("stream", self.codec.value, self.rate, self.channels)

    def relay_options(self, queue_frames: int) -> dict[str, Any]:
        """What the data plane needs to go on where this codec stands: libopus's own encoder and decoder (their
        state carries over, so the caller hears no reset; the engine keeps this object alive for them) and the
        silence shortcut's state. Audio is refused once ``out_cap`` bytes wait unsent: the Python leg's bound, in
        bytes."""
        assert self._enc is not None and self._dec is not None
        packet_bytes = self._enc.bitrate // 400 + 4  # a 20 ms packet at the target rate, and its frame header
        return {
            "opus": (self, *self._enc.native(), *self._dec.native()),  # the engine holds this codec while it runs
            "silent_frames": self._silent_frames,
            "silence_packet": self._silence_packet or b"",
            "out_cap": WRITE_HIGH_WATER + queue_frames * packet_bytes,
            "max_message": MAX_MESSAGE,
        }


class StreamConnection(asyncio.Protocol, Leg):
    """The stream leg after the WebSocket handshake, on a Protocol of its own instead of aiohttp's reader and writer.

    aiohttp answers the upgrade; then this object takes the socket (``transport.set_protocol``), so a frame in is
    parsed and handed on from ``data_received`` and a frame out is one ``transport.write``: no reader queue, no
    sender task, whose wake-ups were a large share of an Opus frame's cost on aiohttp's server. It also lets a steady
    Opus call move to the compiled data plane (server/relay.py) like an AudioSocket call: the parser is known to be
    between frames when the socket changes hands.

    Backpressure: the kernel buffer is kept small; beyond it and ``WRITE_HIGH_WATER`` bytes in the transport,
    outbound frames wait in a queue of ``queue_frames`` that drops the oldest (counted).
    """

    def __init__(self, codec: StreamCodec, queue_frames: int, http: asyncio.BaseProtocol | None = None) -> None:
        self.codec = codec
        self.call: Call | None = None
        self.transport: asyncio.Transport | None = None
        self.parser = wire.FrameParser(MAX_MESSAGE, from_client=True)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.relay_wanted = False  # set by the handler: the call is offered to the C relay until it is decided
        self._held: deque[bytes] = deque()
        self._limit = queue_frames
        self._http = http  # aiohttp's protocol for this connection: told when the connection ends
        self._paused = False
        self._close_sent = False
        self._close_code = wire.NORMAL
        self._peer_closed_seen = False
        self._ended = False  # input after a protocol error or a close is ignored

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        try:
            messages = self.parser.feed(data)
        except wire.WebSocketError as exc:
            self._protocol_error("bad_frame", str(exc), exc.code)
            return
        for opcode, payload in messages:
            if opcode == wire.BINARY:
                self._audio(payload)
            elif opcode == wire.TEXT:
                self._control(payload)
            elif opcode == wire.PING:
                self._write(wire.PONG, payload)
            elif opcode == wire.CLOSE:
                self._peer_closed(payload)
            if self._done():
                return
        if self.relay_wanted:
            self._try_relay()

    def _done(self) -> bool:
        """Whether the input that follows is to be ignored (a callback may have ended the connection)."""
        return self._ended

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        self.transport = None
        if self.call is not None:
            self.call.end("disconnected")
        if not self.closed.done():
            self.closed.set_result(None)
        http, self._http = self._http, None
        if http is not None:  # aiohttp's bookkeeping of its connections
            http.connection_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        held, transport = self._held, self.transport
        while held and not self._paused and transport is not None and not transport.is_closing():
            transport.write(held.popleft())

    # --- input ---

    def _audio(self, payload: bytes) -> None:
        try:
            audio = self.codec.decode(payload)
        except (OpusFrameError, ValueError) as exc:
            self._protocol_error("bad_audio", f"bad audio frame: {exc}", wire.NORMAL)
            return
        if audio and self.call is not None:
            self.call.feed_audio(audio)

    def _control(self, payload: bytes) -> None:
        try:
            ctl = orjson.loads(payload)
            kind = ctl["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._protocol_error("bad_control", "bad control message", wire.NORMAL)
            return
        if self.call is None:
            return
        if kind == "hangup":
            self.call.end("hangup")
        elif kind == "dtmf":
            self.call.dtmf(str(ctl.get("digit", ""))[:1].upper())

    def _peer_closed(self, payload: bytes) -> None:
        """The client's close: answered (unless ours went first), then the connection ends."""
        self._ended = True
        self._peer_closed_seen = True
        if not self._close_sent:
            code, _ = wire.parse_close(payload)
            self._write(wire.CLOSE, wire.close_payload(code or wire.NORMAL))
            self._close_sent = True
        if self.call is not None:
            self.call.end("disconnected")
        if self.transport is not None:
            self.transport.close()

    def _protocol_error(self, reason: str, detail: str, close_code: int) -> None:
        metrics.PROTOCOL_ERRORS.labels("stream", reason).inc()
        call_uuid = self.call.uuid if self.call is not None else None
        log.warning("stream %s: %s", call_uuid, detail, extra={"uuid": call_uuid, "reason": reason})
        self._ended = True
        self._close_code = close_code
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()  # nothing after the bad frame is read as audio (the relay would forward it)
        if self.call is not None:
            self.call.end(f"protocol_error:{reason}")

    # --- Leg ---

    def released(self) -> None:
        self.call = None

    def send_text(self, data: bytes) -> None:
        self._write(wire.TEXT, data)

    def send_frame(self, frame: bytes) -> None:
        transport = self.transport
        if transport is None or self._close_sent:
            return
        data = wire.encode_frame(wire.BINARY, self.codec.encode(frame))
        if not self._paused:
            transport.write(data)
            return
        if len(self._held) >= self._limit:
            self._held.popleft()
            metrics.DROPPED_BACKPRESSURE.inc()
        self._held.append(data)

    def hang_up(self, reason: str, error_code: int | None) -> None:
        """Say why, close, and wait (bounded) for the client's close: closing the socket on a client still sending
        would reset the connection and could lose the hang-up message."""
        transport = self.transport
        if transport is None or self._close_sent:
            return
        self.send_text(orjson.dumps({"type": "hangup", "reason": reason, "error": error_code}))
        self._write(wire.CLOSE, wire.close_payload(self._close_code))
        self._close_sent = True
        if self._peer_closed_seen:
            transport.close()
        else:
            asyncio.get_running_loop().call_later(CLOSE_WAIT, transport.close)

    def _write(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing() and not self._close_sent:
            transport.write(wire.encode_frame(opcode, payload))

    # --- the C relay (server/relay.py) ---

    def detachable(self) -> bool:
        """Between frames, nothing held back, not closing."""
        transport = self.transport
        return (
            not self._ended
            and not self._close_sent
            and not self._paused
            and not self._held
            and self.parser.idle
            and transport is not None
            and not transport.is_closing()
        )

    def relayed(self, transport: asyncio.Transport) -> None:
        """From now on the relay reads the socket and calls ``data_received`` with what it does not handle."""
        self.transport = transport

    def relay_options(self) -> dict[str, Any]:
        return self.codec.relay_options(self._limit)

    def handover_format(self) -> LegFormat:
        return self.codec.format

    def _try_relay(self) -> None:
        call = self.call
        if call is None or call.hand_over(self):
            self.relay_wanted = False


async def handle(request: web.Request, ctx: WorkerContext) -> web.StreamResponse:
    settings = ctx.settings
    if ctx.draining or ctx.slots.full:
        reason = "draining" if ctx.draining else "at_capacity"
        metrics.CALLS_REFUSED.labels(reason).inc()
        raise web.HTTPServiceUnavailable(text=reason)
    try:
        codec = Codec(request.query.get("codec", settings.audio_codec.value).lower())
        call_uuid = str(uuid.UUID(request.query["uuid"])) if "uuid" in request.query else str(uuid.uuid4())
        stream_codec = StreamCodec(codec, settings)
    except (ValueError, OpusFrameError) as exc:
        raise web.HTTPBadRequest(text=f"bad stream parameters: {exc}") from None
    transport = request.transport
    if transport is None:
        raise web.HTTPBadRequest(text="connection closed")
    if not ctx.slots.try_acquire():
        metrics.CALLS_REFUSED.labels("at_capacity").inc()
        raise web.HTTPServiceUnavailable(text="at_capacity")
    ctx.update_readiness()
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_MESSAGE, heartbeat=None)
    try:
        # nothing the client sends after the 101 may reach aiohttp's reader: the socket is ours from then on
        transport.pause_reading()
        await ws.prepare(request)
        if transport.is_closing():
            return ws
        conn = StreamConnection(stream_codec, settings.stream_queue_frames, transport.get_protocol())
        transport.set_protocol(conn)
        conn.connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Real-time audio: seconds of kernel buffering would only be latency. Keep it small so a slow
            # client shows up as backpressure here (bounded queue, counted drops) instead.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        call = Call(ctx, call_uuid, conn, "stream", request.remote or "?")
        conn.call = call
        conn.send_text(
            orjson.dumps({"type": "start", "uuid": call_uuid, "codec": codec.value, "sampleRate": stream_codec.rate})
        )
        conn.relay_wanted = True
        transport.resume_reading()
        await call.run()  # which ends with the leg's release(): neither keeps the other alive once it is over
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(conn.closed), CLOSE_WAIT + 1.0)
    finally:
        ctx.slots.release()
        ctx.update_readiness()
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.close()  # aiohttp's own state: the socket is already closed
    return ws
