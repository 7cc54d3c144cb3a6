"""8 kHz <-> 16 kHz streaming resampling: quality, chunk-independence and steady output sizes."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from avr_runtime.audio.resample import TAPS, Downsampler, Upsampler

AMPLITUDE = 10000.0
PHASE = 0.3


def tone(freq: float, n: int, rate: int, delay: float = 0.0) -> npt.NDArray[np.float64]:
    """A sine, optionally delayed by a (possibly fractional) number of samples."""
    return AMPLITUDE * np.sin(2 * np.pi * freq * (np.arange(n) - delay) / rate + PHASE)


def pcm(x: npt.NDArray[np.float64]) -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def samples(data: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def snr_db(ref: npt.NDArray[np.float64], out: npt.NDArray[np.float64]) -> float:
    e = out - ref
    return float(10 * np.log10(np.dot(ref, ref) / np.dot(e, e)))


# Each linear-phase FIR of TAPS taps at 16 kHz delays by (TAPS - 1) / 2 samples at 16 kHz.
DELAY_16K = (TAPS - 1) / 2


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_up_then_down_keeps_a_sine(freq: float) -> None:
    x = pcm(tone(freq, 8000, 8000))
    up = Upsampler().process(x)
    y = samples(Downsampler().process(up))
    assert len(up) == 2 * len(x)
    assert len(y) == 8000
    # the round trip goes through both filters: 2 * DELAY_16K samples at 16 kHz = DELAY_16K at 8 kHz
    ref = tone(freq, 8000, 8000, delay=DELAY_16K)
    assert snr_db(ref[200:], y[200:]) >= 40.0


def test_upsampler_output_is_the_sine_at_16k() -> None:
    up = samples(Upsampler().process(pcm(tone(1000.0, 8000, 8000))))
    ref = tone(1000.0, 16000, 16000, delay=DELAY_16K)
    assert snr_db(ref[400:], up[400:]) >= 40.0


def test_upsampler_rejects_images() -> None:
    up = samples(Upsampler().process(pcm(tone(1000.0, 8000, 8000))))[400:]
    spectrum = np.abs(np.fft.rfft(up * np.hanning(len(up)))) ** 2
    freqs = np.fft.rfftfreq(len(up), 1 / 16000)
    signal = spectrum[(freqs > 900) & (freqs < 1100)].sum()
    image = spectrum[(freqs > 6900) & (freqs < 7100)].sum()  # 8000 - 1000
    assert 10 * np.log10(signal / image) >= 40.0


def test_downsampler_rejects_aliases() -> None:
    # 6 kHz at 16 kHz would fold to 2 kHz at 8 kHz
    y = samples(Downsampler().process(pcm(tone(6000.0, 16000, 16000))))[100:]
    rms_in = AMPLITUDE / np.sqrt(2)
    rms_out = float(np.sqrt(np.mean(y**2)))
    assert 20 * np.log10(rms_in / max(rms_out, 1e-9)) >= 40.0


def speech_like(n: int, rate: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    x = sum(np.sin(2 * np.pi * k * 150 * t) / k for k in range(1, 20)) * 4000 + rng.normal(0, 500, n)
    return pcm(x)


def feed(resampler: Upsampler | Downsampler, data: bytes, sizes: list[int]) -> tuple[bytes, list[int]]:
    """Feed ``data`` in chunks of the given sizes (bytes, cycled); returns the output and each chunk's size."""
    out: list[bytes] = []
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        out.append(resampler.process(data[pos : pos + size]))
        pos += size
        i += 1
    return b"".join(out), [len(o) for o in out]


def test_upsampler_chunks_give_the_same_bytes_as_whole() -> None:
    data = speech_like(8000, 8000, 1)
    whole = Upsampler().process(data)
    chunked, sizes = feed(Upsampler(), data, [320])
    assert chunked == whole
    assert set(sizes) == {640}  # each 20 ms in gives 20 ms out


def test_upsampler_odd_chunks_give_the_same_bytes_as_whole() -> None:
    data = speech_like(8000, 8000, 2)
    whole = Upsampler().process(data)
    chunked, sizes = feed(Upsampler(), data, [2, 14, 318, 1000, 6])
    assert chunked == whole
    ins = [2, 14, 318, 1000, 6]
    assert all(out == 2 * ins[i % len(ins)] for i, out in enumerate(sizes[:-1]))


def test_downsampler_chunks_give_the_same_bytes_as_whole() -> None:
    data = speech_like(16000, 16000, 3)
    whole = Downsampler().process(data)
    chunked, sizes = feed(Downsampler(), data, [640])
    assert chunked == whole
    assert set(sizes) == {320}


@pytest.mark.parametrize("chunk_samples", [[1], [3], [7, 161, 319], [159, 1], [321, 2, 77]])
def test_downsampler_odd_chunks_give_the_same_bytes_as_whole(chunk_samples: list[int]) -> None:
    data = speech_like(4000, 16000, 4)
    whole = Downsampler().process(data)
    sizes_in = [2 * s for s in chunk_samples]
    chunked, sizes_out = feed(Downsampler(), data, sizes_in)
    assert chunked == whole
    # two samples in, one out: never more than half a sample ahead or behind
    cum_in = 0
    cum_out = 0
    for i, out in enumerate(sizes_out):
        cum_in += min(sizes_in[i % len(sizes_in)] // 2, len(data) // 2 - cum_in)
        cum_out += out // 2
        assert abs(cum_out - cum_in / 2) <= 0.5, f"after chunk {i}: {cum_in} in, {cum_out} out"
    assert cum_in == len(data) // 2


def test_empty_input_gives_empty_output_and_keeps_state() -> None:
    data = speech_like(1600, 16000, 6)
    for cls in (Upsampler, Downsampler):
        plain, with_empty = cls(), cls()
        assert with_empty.process(b"") == b""
        out = [with_empty.process(data[:642]), with_empty.process(b""), with_empty.process(data[642:])]
        assert b"".join(out) == plain.process(data)


def test_state_is_per_instance() -> None:
    data = speech_like(1600, 8000, 5)
    a, b = Upsampler(), Upsampler()
    first = a.process(data)
    assert b.process(data) == first
    assert a.process(data) != first  # history from the first call shapes the start of the second
