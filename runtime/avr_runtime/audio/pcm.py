"""Signed 16-bit little-endian PCM helpers."""

from __future__ import annotations

from typing import Final

import numpy as np

SAMPLE_WIDTH: Final = 2
FRAME_MS: Final = 20
#: One 20 ms slin frame at 8 kHz: what Asterisk sends and expects.
SLIN8_FRAME_BYTES: Final = 8000 * FRAME_MS // 1000 * SAMPLE_WIDTH


def frame_bytes(sample_rate: int, channels: int = 1, frame_ms: int = FRAME_MS) -> int:
    return sample_rate * frame_ms // 1000 * SAMPLE_WIDTH * channels


def silence(nbytes: int) -> bytes:
    return bytes(nbytes)


def to_mono(stereo: bytes) -> bytes:
    s = np.frombuffer(stereo, dtype="<i2").reshape(-1, 2).astype(np.int32)
    return ((s[:, 0] + s[:, 1]) // 2).astype("<i2").tobytes()


def to_stereo(mono: bytes) -> bytes:
    return np.repeat(np.frombuffer(mono, dtype="<i2"), 2).tobytes()
