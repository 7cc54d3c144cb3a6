"""Wideband AudioSocket calls: slin above 8 kHz at the leg's edge, the call's 8 kHz everywhere behind it.

AVR's providers take and send PCM16 8 kHz, and the playout buffer, the pacer and the compiled data plane work in
320-byte 8 kHz frames. So a wideband caller's audio is decimated to 8 kHz as it arrives, and each 8 kHz frame the
pacer sends is interpolated back to the caller's rate and framed in the caller's own message type, one 20 ms frame
per slot. Such a call stays in Python: the data plane speaks 8 kHz 0x10 frames only.

Which rate a call has is fixed by its first audio frame: its type (0x11-0x18 name their rate), or for 0x10 what
``AUDIOSOCKET_FORMAT`` says, where ``auto`` takes a first frame of 640 bytes for 16 kHz, as Asterisk before the
0x12 type sends a slin16 channel's 20 ms. That Asterisk reads every frame it receives as 8 kHz slin, so such a call
is answered in 320-byte 8 kHz frames unless ``AUDIOSOCKET_SLIN16_REPLY=slin16``.
"""

from __future__ import annotations

import logging
from typing import Final

from avr_runtime.audio.resample import WIDEBAND_RATES, Resampler
from avr_runtime.config import AudioSocketFormat, Settings, Slin16Reply
from avr_runtime.protocol import audiosocket as wire
from avr_runtime.protocol.audiosocket import ProtocolError
from avr_runtime.services import metrics

log = logging.getLogger("avr_runtime.server.audiosocket")

#: What the AudioSocket leg accepts: 8 kHz and every wideband rate the resampler converts (not 96 or 192 kHz).
SUPPORTED_RATES: Final = (8000, *WIDEBAND_RATES)
#: 20 ms of 16 kHz slin: a 0x10 frame of this size in ``auto`` is 16 kHz (8 kHz slin is 320, G.711 160).
SLIN16_0X10_FRAME: Final = 640
_TYPE_OF_RATE: Final = {rate: kind for kind, rate in wire.SLIN_RATES.items()}


class RateEdge:
    """One wideband call's conversions, at the edge of its AudioSocket leg."""

    __slots__ = ("_down", "_reply_type", "_up", "rate", "reply_rate")

    def __init__(self, rate: int, reply_type: int, reply_rate: int) -> None:
        self.rate = rate
        self.reply_rate = reply_rate
        self._reply_type = reply_type
        self._down = Resampler(rate, 8000)
        self._up = Resampler(8000, reply_rate) if reply_rate != 8000 else None

    def inbound(self, payload: bytes) -> bytes:
        """Caller audio at the call's rate → PCM16 8 kHz (empty while a short frame has not made a sample)."""
        if len(payload) % 2:
            raise ProtocolError("bad_length", f"slin payload of odd length {len(payload)}")
        return self._down.process(payload)

    def outbound(self, frame8k: bytes) -> bytes:
        """One 8 kHz frame from the pacer → one AudioSocket message of the same 20 ms at the reply rate."""
        up = self._up
        return wire.audio_frame(up.process(frame8k) if up is not None else frame8k, self._reply_type)


def edge_for(rate: int, first_frame: int, settings: Settings, call_uuid: str) -> RateEdge | None:
    """The conversions a slin call needs, from its first audio frame's rate (by type) and size; None at 8 kHz."""
    if rate == 8000:
        fmt = settings.audiosocket_format
        if fmt is not AudioSocketFormat.SLIN16 and (
            fmt is not AudioSocketFormat.AUTO or first_frame != SLIN16_0X10_FRAME
        ):
            return None
        reply_rate = 16000 if settings.audiosocket_slin16_reply is Slin16Reply.SLIN16 else 8000
        if fmt is AudioSocketFormat.AUTO:
            log.info(
                "call %s: 640-byte 0x10 frames taken as 16 kHz slin (Asterisk before the 0x12 type, slin16 "
                "channel); replies are %d Hz 0x10 frames; AUDIOSOCKET_FORMAT=slin reads them as 8 kHz",
                call_uuid,
                reply_rate,
                extra={"uuid": call_uuid},
            )
        metrics.WIDEBAND_CALLS.labels("slin16_0x10").inc()
        return RateEdge(16000, 0x10, reply_rate)
    metrics.WIDEBAND_CALLS.labels(f"slin{rate // 1000}").inc()
    log.debug("call %s: slin at %d Hz (type 0x%02x)", call_uuid, rate, _TYPE_OF_RATE[rate], extra={"uuid": call_uuid})
    return RateEdge(rate, _TYPE_OF_RATE[rate], rate)
