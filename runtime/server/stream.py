"""The WebSocket stream leg: clients that send and receive Opus, PCM16 or G.711 frames instead of AudioSocket.

Binary messages carry audio (one codec frame each, 20 ms recommended); text messages carry control as JSON:
``{"type":"dtmf","digit":"5"}`` and ``{"type":"hangup"}``. The worker answers with paced 20 ms frames in the same codec.

Backpressure: outbound frames wait in a queue of ``STREAM_QUEUE_FRAMES``; a client that reads slower than real time
loses the oldest frames (counted) instead of growing the worker's memory; inbound frames are read one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections import deque

import orjson
from aiohttp import WSMsgType, web

from avr_runtime.audio import g711, pcm
from avr_runtime.audio.opus import OpusDecoder, OpusEncoder, OpusFrameError
from avr_runtime.audio.resample import Downsampler, Upsampler
from avr_runtime.config import Codec, Settings
from avr_runtime.server.call import Call
from avr_runtime.server.context import WorkerContext
from avr_runtime.services import metrics

log = logging.getLogger(__name__)

SEND_BUFFER_BYTES = 32 * 1024
SILENCE_SETTLE_FRAMES = 5
_SILENCE_8K = pcm.silence(pcm.SLIN8_FRAME_BYTES)


class StreamCodec:
    """Converts between the client's codec and the call's PCM16 8 kHz mono.

    Opus needs no resampler: an Opus stream has no fixed sample rate, so the encoder takes the call's 8 kHz audio
    and the decoder renders the client's packets straight at 8 kHz, whatever rate the client uses. That is the
    audio the providers get anyway, and it costs ~60 µs per frame less than two numpy resamplers and a wideband
    encoder (measured: encode 58 µs at 8 kHz vs 104 µs + 13 µs upsampling at 16 kHz, complexity 5).
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


class StreamLeg:
    def __init__(self, ws: web.WebSocketResponse, codec: StreamCodec, queue_frames: int) -> None:
        self.ws = ws
        self.codec = codec
        self._queue: deque[bytes] = deque()
        self._limit = queue_frames
        self._wake = asyncio.Event()
        self._closing: tuple[str, int | None] | None = None

    def send_frame(self, frame: bytes) -> None:
        if len(self._queue) >= self._limit:
            self._queue.popleft()
            metrics.DROPPED_BACKPRESSURE.inc()
        self._queue.append(self.codec.encode(frame))
        self._wake.set()

    def hang_up(self, reason: str, error_code: int | None) -> None:
        self._closing = (reason, error_code)
        self._wake.set()

    async def sender(self) -> None:
        ws = self.ws
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await ws.send_bytes(self._queue.popleft())
            if self._closing is not None:
                reason, code = self._closing
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(orjson.dumps({"type": "hangup", "reason": reason, "error": code}).decode())
                await ws.close()
                return


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
    if not ctx.slots.try_acquire():
        metrics.CALLS_REFUSED.labels("at_capacity").inc()
        raise web.HTTPServiceUnavailable(text="at_capacity")
    ctx.update_readiness()
    ws = web.WebSocketResponse(compress=False, max_msg_size=64 * 1024, heartbeat=30)
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:
        # Real-time audio: seconds of kernel buffering would only be latency. Keep it small so a slow
        # client shows up as backpressure here (bounded queue, counted drops) instead.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    try:
        await ws.prepare(request)
        leg = StreamLeg(ws, stream_codec, settings.stream_queue_frames)
        call = Call(ctx, call_uuid, leg, "stream", request.remote or "?")
        run = asyncio.ensure_future(call.run())
        sender = asyncio.ensure_future(leg.sender())
        await ws.send_str(
            orjson.dumps(
                {"type": "start", "uuid": call_uuid, "codec": codec.value, "sampleRate": stream_codec.rate}
            ).decode()
        )
        try:
            await _receive(ws, call, stream_codec)
        finally:
            call.end("disconnected")
            await run
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError, RuntimeError):
                await asyncio.wait_for(sender, timeout=2.0)
            sender.cancel()
    finally:
        ctx.slots.release()
        ctx.update_readiness()
    return ws


async def _receive(ws: web.WebSocketResponse, call: Call, codec: StreamCodec) -> None:
    async for msg in ws:
        if msg.type is WSMsgType.BINARY:
            try:
                audio = codec.decode(msg.data)
            except (OpusFrameError, ValueError) as exc:
                metrics.PROTOCOL_ERRORS.labels("stream", "bad_audio").inc()
                log.warning("stream %s: bad audio frame: %s", call.uuid, exc, extra={"uuid": call.uuid})
                call.end("protocol_error:bad_audio")
                return
            if audio:
                call.feed_audio(audio)
        elif msg.type is WSMsgType.TEXT:
            try:
                ctl = orjson.loads(msg.data)
                kind = ctl["type"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                metrics.PROTOCOL_ERRORS.labels("stream", "bad_control").inc()
                call.end("protocol_error:bad_control")
                return
            if kind == "hangup":
                call.end("hangup")
                return
            if kind == "dtmf":
                call.dtmf(str(ctl.get("digit", ""))[:1].upper())
        elif msg.type is WSMsgType.ERROR:
            return
