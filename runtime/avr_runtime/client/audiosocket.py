"""An AudioSocket client that behaves like Asterisk: sends the UUID, then one frame every 20 ms.

By default 320-byte 0x10 frames (8 kHz slin); ``audio_type`` and ``frame_bytes`` make it a wideband Asterisk
(0x12 frames of 640 bytes for a slin16 channel, or 640-byte 0x10 frames as Asterisk sent before the 0x12 type).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid as uuidlib
from dataclasses import dataclass, field

from avr_runtime.audio import pcm
from avr_runtime.protocol import audiosocket as wire


@dataclass
class CallResult:
    uuid: str
    frames_sent: int = 0
    audio_frames: list[bytes] = field(default_factory=list)
    audio_rates: list[int] = field(default_factory=list)  # the rate each audio frame's type says
    arrivals: list[float] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)
    hangup: bool = False
    closed: bool = False

    @property
    def non_silent_frames(self) -> int:
        return sum(1 for f in self.audio_frames if any(f))

    def gaps_ms(self) -> list[float]:
        return [(b - a) * 1000 for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]


async def place_call(
    host: str,
    port: int,
    audio: bytes,
    *,
    call_uuid: str | None = None,
    dtmf: dict[int, str] | None = None,
    raw: dict[int, bytes] | None = None,
    probe: bytes | None = None,
    tail_s: float = 0.5,
    hangup: bool = True,
    frame_bytes: int = pcm.SLIN8_FRAME_BYTES,
    audio_type: int = wire.Kind.AUDIO,
    silence_byte: int = 0,
    time_limit: float = 60.0,
) -> CallResult:
    """Stream ``audio`` paced in real time, then ``tail_s`` of silence, collecting what comes back.

    ``dtmf`` maps a frame index to a digit sent just before that frame, ``raw`` to bytes sent as they are (malformed
    input, for tests). ``audio_type`` is the message type of the audio frames sent (0x10-0x18). ``silence_byte``
    pads the audio: 0 for slin, 0xFF for μ-law, 0xD5 for A-law. With ``probe``, that one frame goes first and the
    stream starts 0.1 s after its echo is back (the provider path is up, as a load test wants it); the result then
    counts from the start of the stream.
    """
    result = CallResult(call_uuid or str(uuidlib.uuid4()))
    reader, writer = await asyncio.open_connection(host, port)
    parser = wire.FrameParser(one_type=False)  # the worker answers in 8 kHz slin until it has heard our audio
    probed = asyncio.Event()

    async def receive() -> None:
        with contextlib.suppress(ConnectionError):
            await _receive()
        result.closed = True

    async def _receive() -> None:
        while data := await reader.read(65536):
            now = time.monotonic()
            for frame in parser.feed(data):
                if frame.kind is wire.Kind.AUDIO:
                    if frame.payload == probe:
                        probed.set()
                    result.audio_frames.append(frame.payload)
                    result.audio_rates.append(frame.rate)
                    result.arrivals.append(now)
                elif frame.kind is wire.Kind.HANGUP:
                    result.hangup = True
                elif frame.kind is wire.Kind.ERROR:
                    result.errors.append(frame.payload[0] if frame.payload else -1)

    receiver = asyncio.create_task(receive())
    async with asyncio.timeout(time_limit):
        writer.write(wire.uuid_frame(uuidlib.UUID(result.uuid)))
        if probe is not None:
            writer.write(wire.audio_frame(probe, audio_type))
            async with asyncio.timeout(5):
                await probed.wait()
            await asyncio.sleep(0.1)
            del result.audio_frames[:], result.audio_rates[:], result.arrivals[:]
        tail = int(tail_s * 50) * frame_bytes + (-len(audio) % frame_bytes)
        padded = audio + bytes([silence_byte]) * tail
        start = time.monotonic()
        for i in range(len(padded) // frame_bytes):
            if receiver.done():
                break
            if dtmf and i in dtmf:
                writer.write(wire.encode(wire.Kind.DTMF, dtmf[i].encode()))
            if raw and i in raw:
                writer.write(raw[i])
            writer.write(wire.audio_frame(padded[i * frame_bytes : (i + 1) * frame_bytes], audio_type))
            result.frames_sent += 1
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
        if hangup and not receiver.done():
            writer.write(wire.HANGUP_FRAME)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(receiver), timeout=5.0)
    receiver.cancel()
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return result
