"""The stream leg's codec: Opus straight from and to the call's 8 kHz audio, and idle silence at no encoder cost."""

from __future__ import annotations

import numpy as np
import pytest

from avr_runtime.audio.opus import OpusDecoder, OpusEncoder
from avr_runtime.config import Codec, Settings
from avr_runtime.server.stream import SILENCE_SETTLE_FRAMES, StreamCodec


def tone(rate: int, hz: float, frames: int, amplitude: float = 8000.0) -> list[bytes]:
    n = rate // 50
    t = np.arange(n * frames) / rate
    samples = (amplitude * np.sin(2 * np.pi * hz * t)).astype("<i2")
    return [samples[i * n : (i + 1) * n].tobytes() for i in range(frames)]


def dominant_hz(pcm: bytes, rate: int) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


class CountingEncoder:
    def __init__(self, inner: OpusEncoder) -> None:
        self.inner = inner
        self.calls = 0

    def encode(self, frame: bytes) -> bytes:
        self.calls += 1
        return self.inner.encode(frame)


@pytest.mark.parametrize("client_rate", [16000, 8000])
def test_opus_both_ways_at_any_client_rate(client_rate: int) -> None:
    codec = StreamCodec(Codec.OPUS, Settings(audio_sample_rate=client_rate))
    assert codec.rate == client_rate
    # client -> worker: the client's packets come out as 20 ms of 8 kHz PCM with the same tone
    client_enc = OpusEncoder(client_rate, 1, 16000)
    decoded = b"".join(codec.decode(client_enc.encode(f)) for f in tone(client_rate, 400, 25))
    assert len(decoded) == 25 * 320
    assert dominant_hz(decoded[-3200:], 8000) == pytest.approx(400, abs=15)
    # worker -> client: the call's 8 kHz audio decodes at the client's rate
    client_dec = OpusDecoder(client_rate, 1)
    played = b"".join(client_dec.decode(codec.encode(f)) for f in tone(8000, 600, 25))
    assert len(played) == 25 * client_rate // 50 * 2
    assert dominant_hz(played[-client_rate // 5 :], client_rate) == pytest.approx(600, abs=15)


def test_idle_silence_stops_running_the_encoder_and_audio_resumes_it() -> None:
    codec = StreamCodec(Codec.OPUS, Settings())
    counter = CountingEncoder(codec._enc)  # type: ignore[arg-type]
    codec._enc = counter  # type: ignore[assignment]
    silence = bytes(320)
    packets = [codec.encode(silence) for _ in range(50)]
    assert counter.calls == SILENCE_SETTLE_FRAMES
    assert len({p for p in packets[SILENCE_SETTLE_FRAMES - 1 :]}) == 1
    client = OpusDecoder(16000, 1)
    quiet = np.frombuffer(b"".join(client.decode(p) for p in packets), dtype="<i2")
    assert np.abs(quiet).max() < 50
    # speech resets it: encoded every frame, then silence is encoded again until it settles
    for frame in tone(8000, 500, 10):
        codec.encode(frame)
    assert counter.calls == SILENCE_SETTLE_FRAMES + 10
    codec.encode(silence)
    assert counter.calls == SILENCE_SETTLE_FRAMES + 11
