"""Stateful 2:1 and 1:2 resampling between 8 kHz and 16 kHz.

A polyphase windowed-sinc FIR with the filter state carried across calls, so feeding 20 ms chunks gives exactly the
same samples as feeding the whole signal at once (no chunk-edge artefacts) and every chunk in gives a fixed-size chunk
out (no bursts). soxr's streaming mode emits its output in bursts several frames long for 20 ms input, which
pacing cannot use.
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


#: The band every rate conversion to or from the call's 8 kHz keeps: what an 8 kHz call can carry, less the
#: transition band a filter needs to stop aliases and images by ``STOP_DB`` before 4 kHz.
PASS_HZ: Final = 3500.0
STOP_HZ: Final = 4000.0
STOP_DB: Final = 70.0
#: Rates with a 20 ms frame of whole samples that :class:`Resampler` converts to and from 8 kHz. 96 and 192 kHz
#: would also work, at a filter cost that grows with the rate for a band that stops at 4 kHz; they are refused.
WIDEBAND_RATES: Final = (12000, 16000, 24000, 32000, 44100, 48000)


def _kaiser_lowpass(rate: float) -> npt.NDArray[np.float64]:
    """A linear-phase low-pass at ``rate``: flat to PASS_HZ, at least STOP_DB down from STOP_HZ (Kaiser's design
    formulas). Odd length, so its delay is a whole number of samples."""
    beta = 0.1102 * (STOP_DB - 8.7)
    width = 2 * np.pi * (STOP_HZ - PASS_HZ) / rate
    n = int(np.ceil((STOP_DB - 7.95) / (2.285 * width))) + 1
    n += 1 - n % 2
    cutoff = (PASS_HZ + STOP_HZ) / 2 / rate  # cycles per sample
    k = np.arange(n) - (n - 1) / 2
    h: npt.NDArray[np.float64] = 2 * cutoff * np.sinc(2 * cutoff * k) * np.kaiser(n, beta)
    return h / float(h.sum())


class Resampler:
    """Streaming rational resampling between ``rate_in`` and ``rate_out`` (one of them 8 kHz, the other in
    :data:`WIDEBAND_RATES`, or any pair with a modest ratio), for the AudioSocket leg of wideband calls.

    Polyphase: the signal is upsampled by L, low-passed (:func:`_kaiser_lowpass`, at L x ``rate_in``) and
    decimated by M, computing only the samples kept. The low-pass is the anti-aliasing filter when decimating and
    the anti-imaging filter when interpolating; it keeps 0-3.5 kHz and stops 4 kHz and above, so nothing above the
    8 kHz call's band folds into it. The filter state and the phase are carried across calls: any chunking gives
    the same samples as the whole signal, and 20 ms in gives exactly 20 ms out at every rate whose 20 ms frame is
    a whole number of samples (steady frames for the pacer, no bursts). Digital silence into a silent filter costs
    no arithmetic.
    """

    __slots__ = ("_bank", "_down", "_history", "_pos", "_quiet", "_taps", "_up", "delay", "rate_in", "rate_out")

    def __init__(self, rate_in: int, rate_out: int) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError("rates must be positive")
        g = int(np.gcd(rate_in, rate_out))
        self.rate_in, self.rate_out = rate_in, rate_out
        self._up, self._down = rate_out // g, rate_in // g
        if self._up * self._down > 50_000:
            raise ValueError(f"no resampling from {rate_in} to {rate_out} Hz: the ratio is too fine")
        h = _kaiser_lowpass(float(rate_in * self._up)) * self._up
        #: group delay in output samples (the filter's centre), for aligning what goes in with what comes out
        self.delay = (len(h) - 1) / 2 / self._down
        taps = -(-len(h) // self._up)  # taps per phase, in input samples
        h = np.concatenate((h, np.zeros(taps * self._up - len(h))))
        # bank[p, t]: the coefficient for input sample i_hi - (taps - 1 - t) at phase p, ready for a dot product
        # with the window x[i_hi - taps + 1 .. i_hi]
        self._bank = h.reshape(taps, self._up).T[:, ::-1].copy()
        self._taps = taps
        self._history = np.zeros(taps - 1)
        # position of the next output sample on the upsampled grid, from the start of history + next chunk
        self._pos = (taps - 1) * self._up
        self._quiet = True  # the history is all zeros

    def process(self, pcm: bytes) -> bytes:
        if not pcm:
            return b""
        n_in = len(pcm) // 2
        up, down, keep = self._up, self._down, self._taps - 1
        pos = self._pos
        # an output sample needs its newest input sample inside history + chunk
        count = max(0, -(-((keep + n_in) * up - pos) // down))
        self._pos = pos + count * down - n_in * up  # the buffer's start moves on by the chunk
        if self._quiet and not any(pcm):
            return b"\x00\x00" * count
        x = np.concatenate((self._history, _to_float(pcm)))
        windows = np.lib.stride_tricks.sliding_window_view(x, self._taps)  # row r ends at sample r + keep
        if up == 1:  # decimation: one phase, evenly spaced windows
            start = pos - keep
            y = windows[start : start + (count - 1) * down + 1 : down] @ self._bank[0]
        elif down == 1:  # interpolation: every phase of consecutive windows
            first, skip = divmod(pos, up)
            rows = windows[first - keep : (pos + count - 1) // up - keep + 1]
            y = (rows @ self._bank.T).ravel()[skip : skip + count]
        else:
            i_hi, phase = np.divmod(pos + down * np.arange(count), up)
            y = np.einsum("kt,kt->k", windows[i_hi - keep], self._bank[phase])
        self._history = x[len(x) - keep :] if keep else x[:0]
        self._quiet = not self._history.any()
        return _to_pcm(y)
