"""Opus through opuslib, with every size checked before libopus sees it.

opuslib does not check the PCM length against the frame size (a short buffer is read out of bounds) and ``str()`` of
its OpusError raises, so this module validates sizes itself and reports libopus failures by code.
"""

from __future__ import annotations

import ctypes
from typing import Any, Final

import opuslib
import opuslib.api

from avr_runtime.audio import pcm

#: Opus frame durations in tenths of a millisecond: 2.5, 5, 10, 20, 40, 60 ms.
FRAME_DURATIONS_DMS: Final = (25, 50, 100, 200, 400, 600)
SAMPLE_RATES: Final = (8000, 12000, 16000, 24000, 48000)
MAX_PACKET: Final = 1275 * 3  # RFC 6716: up to 1275 bytes per frame, up to 120 ms per packet
_LIBOPUS_ERRORS: Final = {
    -1: "bad argument",
    -2: "buffer too small",
    -3: "internal error",
    -4: "corrupted or invalid packet",
    -5: "unimplemented request",
    -6: "invalid state",
    -7: "memory allocation failed",
}


class OpusFrameError(ValueError):
    """A frame or packet that cannot be encoded or decoded; the message says what was wrong."""


def valid_frame_sizes(sample_rate: int) -> tuple[int, ...]:
    """Samples per channel in each allowed frame at this rate (at 16 kHz: 40, 80, 160, 320, 640, 960)."""
    if sample_rate not in SAMPLE_RATES:
        raise OpusFrameError(f"Opus does not support {sample_rate} Hz (allowed: {SAMPLE_RATES})")
    return tuple(sample_rate * d // 10000 for d in FRAME_DURATIONS_DMS)


def _libopus(exc: opuslib.OpusError) -> OpusFrameError:
    code = int(getattr(exc, "code", 0))
    return OpusFrameError(f"libopus error {code}: {_LIBOPUS_ERRORS.get(code, 'unknown')}")


class OpusEncoder:
    __slots__ = ("_bytes_per_frame", "_enc", "bitrate", "channels", "frame_size", "sample_rate")

    def __init__(
        self,
        sample_rate: int = 16000,
        channels: int = 1,
        bitrate: int = 16000,
        frame_ms: float = 20,
        complexity: int = 5,
    ) -> None:
        if channels not in (1, 2):
            raise OpusFrameError(f"Opus supports 1 or 2 channels, not {channels}")
        frame_size = int(sample_rate * frame_ms / 1000)
        if frame_size not in valid_frame_sizes(sample_rate):
            raise OpusFrameError(
                f"{frame_ms} ms is not an Opus frame duration at {sample_rate} Hz "
                f"(valid sizes: {valid_frame_sizes(sample_rate)} samples)"
            )
        if not 500 <= bitrate <= 512000:
            raise OpusFrameError(f"bitrate {bitrate} outside 500..512000 b/s")
        if not 0 <= complexity <= 10:
            raise OpusFrameError(f"complexity {complexity} outside 0..10")
        self.sample_rate = sample_rate
        self.channels = channels
        self.bitrate = bitrate
        self.frame_size = frame_size
        self._bytes_per_frame = frame_size * channels * pcm.SAMPLE_WIDTH
        self._enc = opuslib.Encoder(sample_rate, channels, opuslib.APPLICATION_VOIP)
        self._enc.bitrate = bitrate
        self._enc.complexity = complexity

    @property
    def bytes_per_frame(self) -> int:
        return self._bytes_per_frame

    def encode(self, frame: bytes) -> bytes:
        if len(frame) != self._bytes_per_frame:
            raise OpusFrameError(
                f"PCM frame of {len(frame)} bytes; this encoder takes exactly {self._bytes_per_frame} "
                f"({self.frame_size} samples x {self.channels} channel(s) x 16 bit)"
            )
        try:
            return bytes(self._enc.encode(frame, self.frame_size))
        except opuslib.OpusError as exc:
            raise _libopus(exc) from None

    def native(self) -> tuple[int, int]:
        """``opus_encode``'s address and this encoder's state, for compiled code that encodes in its place. Valid
        while this object lives."""
        return _address(opuslib.api.libopus.opus_encode), _address(self._enc.encoder_state)


class OpusDecoder:
    __slots__ = ("_dec", "_max_samples", "channels", "sample_rate")

    def __init__(self, sample_rate: int = 16000, channels: int = 1) -> None:
        valid_frame_sizes(sample_rate)
        if channels not in (1, 2):
            raise OpusFrameError(f"Opus supports 1 or 2 channels, not {channels}")
        self.sample_rate = sample_rate
        self.channels = channels
        self._max_samples = sample_rate * 120 // 1000  # the longest packet Opus allows
        self._dec = opuslib.Decoder(sample_rate, channels)

    def decode(self, packet: bytes) -> bytes:
        if not packet:
            raise OpusFrameError("empty Opus packet")
        if len(packet) > MAX_PACKET:
            raise OpusFrameError(f"Opus packet of {len(packet)} bytes exceeds {MAX_PACKET}")
        try:
            return bytes(self._dec.decode(packet, self._max_samples))
        except opuslib.OpusError as exc:
            raise _libopus(exc) from None

    def native(self) -> tuple[int, int]:
        """``opus_decode``'s address and this decoder's state (see OpusEncoder.native)."""
        return _address(opuslib.api.libopus.opus_decode), _address(self._dec.decoder_state)


def _address(obj: Any) -> int:
    address = ctypes.cast(obj, ctypes.c_void_p).value
    if not address:
        raise OpusFrameError("libopus handle without an address")
    return int(address)
