"""Stateful 2:1 and 1:2 resampling between 8 kHz and 16 kHz.

A polyphase windowed-sinc FIR with the filter state carried across calls, so feeding 20 ms chunks gives exactly the
same samples as feeding the whole signal at once (no chunk-edge artefacts) and every chunk in gives a fixed-size chunk
out (no bursts). soxr's streaming mode emits ~100 ms bursts for 20 ms input, which pacing cannot use.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

TAPS: Final = 48  # per full filter; 24 per polyphase branch


def _design(taps: int) -> npt.NDArray[np.float64]:
    """Half-band low-pass (cut-off at a quarter of the high rate) with a Kaiser window."""
    n = np.arange(taps) - (taps - 1) / 2
    h: npt.NDArray[np.float64] = 0.5 * np.sinc(0.5 * n) * np.kaiser(taps, 8.0)
    return h / float(h.sum())


_FILTER: Final = _design(TAPS)


def _to_float(pcm: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def _to_pcm(x: npt.NDArray[np.float64]) -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


class Upsampler:
    """8 kHz → 16 kHz: each input sample yields two output samples."""

    __slots__ = ("_even", "_history", "_odd")

    def __init__(self) -> None:
        # zero-stuffing then filtering == two half-length filters on the original samples
        self._even = 2.0 * _FILTER[0::2]
        self._odd = 2.0 * _FILTER[1::2]
        self._history = np.zeros(len(self._even) - 1)

    def process(self, pcm: bytes) -> bytes:
        if not pcm:
            return b""
        x = np.concatenate((self._history, _to_float(pcm)))
        self._history = x[len(x) - len(self._history) :]
        out = np.empty(2 * (len(x) - len(self._history)))
        out[0::2] = np.convolve(x, self._even, mode="valid")
        out[1::2] = np.convolve(x, self._odd, mode="valid")
        return _to_pcm(out)


class Downsampler:
    """16 kHz → 8 kHz: every two input samples yield one output sample (an odd sample waits for its pair)."""

    __slots__ = ("_history", "_phase")

    def __init__(self) -> None:
        self._history = np.zeros(TAPS - 1)
        self._phase = 0  # index into the next chunk of the first sample to keep

    def process(self, pcm: bytes) -> bytes:
        if not pcm:  # convolving the history alone would invent a sample
            return b""
        x = np.concatenate((self._history, _to_float(pcm)))
        self._history = x[len(x) - (TAPS - 1) :]
        y = np.convolve(x, _FILTER, mode="valid")
        out = y[self._phase :: 2]
        self._phase = (self._phase + len(y)) % 2
        return _to_pcm(out)
