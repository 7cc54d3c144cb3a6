"""Rational streaming resampling between the call's 8 kHz and the wideband AudioSocket rates (12-48 kHz)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from avr_runtime.audio.resample import PASS_HZ, WIDEBAND_RATES, Resampler
from avr_runtime.client.speech import espeak, espeak_available, speech_like

AMPLITUDE = 10000.0


def tone(freq: float, n: int, rate: int, delay: float = 0.0) -> npt.NDArray[np.float64]:
    return AMPLITUDE * np.sin(2 * np.pi * freq * (np.arange(n) - delay) / rate + 0.3)


def pcm(x: npt.NDArray[np.float64]) -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def samples(data: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def snr_db(ref: npt.NDArray[np.float64], out: npt.NDArray[np.float64]) -> float:
    e = out - ref
    return float(10 * np.log10(np.dot(ref, ref) / max(float(np.dot(e, e)), 1e-9)))


def band_limit(x: npt.NDArray[np.float64], rate: int, hz: float) -> npt.NDArray[np.float64]:
    """An ideal low-pass (FFT brick wall): the reference signal an 8 kHz call can carry whole."""
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(len(x), 1 / rate) > hz] = 0
    return np.fft.irfft(spectrum, len(x))


def frames(resampler: Resampler, data: bytes, size: int) -> list[bytes]:
    return [resampler.process(data[i : i + size]) for i in range(0, len(data), size)]


def round_trip(x: bytes, rate: int) -> tuple[npt.NDArray[np.float64], float]:
    """``rate`` → 8 kHz → ``rate`` in 20 ms frames, as a wideband call's audio goes to the provider and back;
    returns the result and the whole delay in samples at ``rate``."""
    down, up = Resampler(rate, 8000), Resampler(8000, rate)
    narrow = b"".join(frames(down, x, rate // 50 * 2))
    wide = b"".join(frames(up, narrow, 320))
    return samples(wide), down.delay * rate / 8000 + up.delay


@pytest.fixture(scope="module")
def speech16() -> npt.NDArray[np.float64]:
    """Real speech at 16 kHz (espeak-ng), band-limited to what an 8 kHz call keeps."""
    text = "Hello, I would like to check the status of my order, please."
    raw = espeak(text, 16000) if espeak_available() else speech_like(3.0, 16000)
    return band_limit(samples(raw), 16000, 3300.0)


def test_speech_at_16k_survives_the_round_trip_through_8k(speech16: npt.NDArray[np.float64]) -> None:
    y, lag = round_trip(pcm(speech16), 16000)
    delay = int(lag)
    assert delay == lag, "at 16 kHz both filters delay by whole samples"
    n = len(speech16) - delay
    assert snr_db(speech16[:n], y[delay : delay + n]) >= 25.0
    # the delay is what the filters say: no other lag matches better
    corr = [float(np.dot(speech16[: n - 8], y[d : d + n - 8])) for d in range(delay - 4, delay + 5)]
    assert int(np.argmax(corr)) == 4


@pytest.mark.parametrize("rate", WIDEBAND_RATES)
@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_tones_in_the_8k_band_survive_the_round_trip_at_every_rate(rate: int, freq: float) -> None:
    y, delay = round_trip(pcm(tone(freq, rate, rate)), rate)
    ref = tone(freq, rate, rate, delay=delay)
    assert snr_db(ref[rate // 10 :], y[rate // 10 :]) >= 40.0


@pytest.mark.parametrize(
    ("rate", "freq"),
    [
        (16000, 4100.0),
        (16000, 4500.0),
        (16000, 6000.0),
        (16000, 7500.0),
        (48000, 5000.0),
        (48000, 12000.0),
        (48000, 20000.0),
        (12000, 5000.0),
        (44100, 9000.0),
    ],
)
def test_tones_above_4k_are_stopped_not_aliased(rate: int, freq: float) -> None:
    # 4.5 kHz at 16 kHz would fold to 3.5 kHz at 8 kHz: in the call's band, if the decimator let it through
    y = samples(b"".join(frames(Resampler(rate, 8000), pcm(tone(freq, rate, rate)), rate // 50 * 2)))[400:]
    rms_in = AMPLITUDE / np.sqrt(2)
    rms_out = float(np.sqrt(np.mean(y**2)))
    assert 20 * np.log10(rms_in / max(rms_out, 1e-9)) >= 60.0


@pytest.mark.parametrize("rate", [16000, 48000])
def test_upsampling_leaves_no_images(rate: int) -> None:
    y = samples(b"".join(frames(Resampler(8000, rate), pcm(tone(1000.0, 8000, 8000)), 320)))[rate // 10 :]
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y)))) ** 2
    freqs = np.fft.rfftfreq(len(y), 1 / rate)
    signal = spectrum[(freqs > 900) & (freqs < 1100)].sum()
    images = spectrum[freqs > 4000].sum()  # 7 kHz, 9 kHz, ...
    assert 10 * np.log10(signal / images) >= 60.0


@pytest.mark.parametrize("rate", WIDEBAND_RATES)
def test_20_ms_in_gives_20_ms_out_and_chunking_changes_nothing(rate: int) -> None:
    x = pcm(band_limit(np.random.default_rng(rate).normal(0, 3000, rate), rate, PASS_HZ))
    frame = rate // 50 * 2
    down = frames(Resampler(rate, 8000), x, frame)
    assert {len(f) for f in down} == {320}
    narrow = b"".join(down)
    assert narrow == Resampler(rate, 8000).process(x)
    up = frames(Resampler(8000, rate), narrow, 320)
    assert {len(f) for f in up} == {frame}
    assert b"".join(up) == Resampler(8000, rate).process(narrow)
    # odd chunk sizes: the same samples, never more than one output sample ahead of the ideal count
    for resampler, data in ((Resampler(rate, 8000), x), (Resampler(8000, rate), narrow)):
        sizes = [2, 14, 318, 1000, 6, 322]
        out: list[bytes] = []
        pos = i = 0
        while pos < len(data):
            out.append(resampler.process(data[pos : pos + sizes[i % len(sizes)]]))
            pos += sizes[i % len(sizes)]
            i += 1
            ideal = min(pos, len(data)) // 2 * resampler.rate_out / resampler.rate_in
            assert abs(sum(len(o) for o in out) // 2 - ideal) <= 1
        reference = (Resampler(rate, 8000) if resampler.rate_in == rate else Resampler(8000, rate)).process(data)
        assert b"".join(out) == reference


def test_silence_is_silence_and_leaves_the_state_as_computed() -> None:
    x = pcm(tone(1000.0, 1600, 16000))
    a, b = Resampler(16000, 8000), Resampler(16000, 8000)
    assert a.process(bytes(640)) == bytes(320)  # the shortcut: a silent filter fed silence
    b.process(bytes(640))
    ringing = a.process(x) + a.process(bytes(640))  # the filter rings out after speech: computed, not skipped
    assert ringing[len(x) // 2 :] != bytes(320)
    assert ringing == b.process(x) + b.process(bytes(640))


def test_an_unreasonable_ratio_is_refused() -> None:
    with pytest.raises(ValueError):
        Resampler(8000, 44101)
